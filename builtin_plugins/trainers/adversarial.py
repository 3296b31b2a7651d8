"""The ``sft-adversarial`` trainer: adversarial training on the input embeddings (FGM, or PGD).

Per micro-batch: the clean loss, the gradient ``g`` of that loss with respect to a perturbation of the
embeddings, a perturbation ``r`` of L2 norm ``epsilon`` along ``g`` (FGM: one step ``epsilon * g / ||g||``;
PGD: ``pgd_steps`` steps of size ``pgd_alpha``, each projected back onto the ``epsilon`` ball), then the loss
with ``r`` added. The micro-batch's loss is ``(1 - adversarial_weight) * clean + adversarial_weight *
adversarial``; ``r`` is a constant for the update (only the model's parameters get gradients).

With ``perturb = "weights"`` (the default) ``r`` lives in the embedding matrix: one vector per vocabulary row
the batch uses, the gradient of the loss with respect to those rows, normalised over all of them, as when
FGM perturbs ``embedding.weight`` and restores it after the adversarial pass. ``perturb = "positions"``
gives each token position its own vector, normalised per sequence (per packed row in packed batches), as in
Miyato et al.'s adversarial training for text.

The weights are never written to: a forward hook adds ``r[input_ids]`` to the embedding layer's output, which
is exactly the output of the perturbed matrix (``(W + r)[ids] = W[ids] + r[ids]``). So restoring is exact by
construction, and the same code works when the embedding is frozen (LoRA and other adapters: the gradient
with respect to ``r`` exists even though ``W`` has none), when input and output embeddings are tied (an
in-place edit would also perturb the output layer and the tensors autograd saved for the clean pass), and
when parameters are sharded across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

from pydantic import Field, model_validator

import ift

from .totals import RunningTotals


class AdversarialKeys(ift.ObjectiveConfig):
    """The attack's keys (in ``[trainer]`` beside the loop's)."""

    epsilon: float = Field(
        1.0,
        ge=0,
        description="L2 radius of the perturbation (0: no attack, plain sft gradient at twice the forward cost).",
    )
    adversarial_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Loss = (1 - w) * clean + w * adversarial. "
        "Adding both losses, as many FGM recipes do, is w = 0.5 at twice the "
        "learning rate.",
    )
    attack: Literal["fgm", "pgd"] = Field(
        "fgm",
        description="fgm: one step to the epsilon sphere; pgd: pgd_steps projected steps inside the epsilon ball.",
    )
    pgd_steps: int = Field(
        3, gt=0, description="PGD steps (one extra forward and backward pass each, the first reuses the clean pass)."
    )
    pgd_alpha: float | None = Field(None, gt=0, description="PGD step size; default 2.5 * epsilon / pgd_steps.")
    perturb: Literal["weights", "positions"] = Field(
        "weights",
        description="weights: one vector per embedding row used (FGM on the embedding matrix); "
        "positions: one per token position, normalised per sequence.",
    )

    @model_validator(mode="after")
    def _pgd_keys_need_pgd(self) -> AdversarialKeys:
        given = {"pgd_steps", "pgd_alpha"} & self.model_fields_set
        if self.attack == "fgm" and given:
            raise ValueError(f"trainer.{sorted(given)[0]} only applies with trainer.attack = 'pgd'")
        return self

    @property
    def step_size(self) -> float:
        return self.pgd_alpha if self.pgd_alpha is not None else 2.5 * self.epsilon / self.pgd_steps


class AdversarialConfig(ift.SFTConfig, AdversarialKeys):
    """``[trainer]`` of ``sft-adversarial``: the loop's keys and the attack's."""


class EmbeddingAdversarial(RunningTotals, ift.Objective):
    """``(1 - w) * clean + w * adversarial`` summed over the trained tokens, the adversarial loss taken with the
    input embeddings perturbed along the clean loss's gradient (FGM, or PGD). Logs ``clean_loss`` and
    ``adversarial_loss`` per step; keeps their totals across a resume for the run's summary."""

    name = "sft-adversarial"
    Config = AdversarialKeys
    config: AdversarialKeys

    def setup(self, ctx: ift.TrainContext, model: Any) -> None:
        self.start_totals()  # clean loss, adversarial loss, loss tokens

    def splits(self) -> bool:
        # perturb = "weights" normalises one perturbation over every row the micro-batch uses
        return self.config.perturb == "positions"

    def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
        import torch

        cfg, adapter = self.config, self.ctx.adapter
        attack = EmbeddingAttack(input_embeddings(model), batch["input_ids"], cfg.perturb)

        def loss_at(delta: Any) -> tuple[Any, Any]:
            with attack.added(delta):
                return adapter.loss_sum(model, batch)

        def losses_at(delta: Any) -> tuple[Any, Any]:
            """Per-example summed losses and counts where the adapter gives them (per-source training loss),
            else the batch's sum and count."""
            with attack.added(delta):
                split = adapter.loss_by_example(model, batch)
            return split if split is not None else loss_at(delta)

        # The clean pass goes through a zero perturbation so that its gradient with respect to the
        # perturbation comes out of the same forward pass (adding zeros leaves every value unchanged).
        zero = attack.zeros().requires_grad_(True)
        clean_sums, counts = losses_at(zero)
        clean, count = clean_sums.sum(), counts.sum()
        (grad,) = torch.autograd.grad(clean, zero, retain_graph=True, allow_unused=True)
        grad = torch.zeros_like(zero) if grad is None else grad
        if cfg.attack == "fgm":
            delta = cfg.epsilon * attack.unit(grad)
        else:
            delta = attack.project(cfg.step_size * attack.unit(grad), cfg.epsilon)
            for _ in range(cfg.pgd_steps - 1):
                delta = delta.detach().requires_grad_(True)
                inner, _ = loss_at(delta)
                (grad,) = torch.autograd.grad(inner, delta, allow_unused=True)
                grad = torch.zeros_like(delta) if grad is None else grad
                delta = attack.project(delta + cfg.step_size * attack.unit(grad), cfg.epsilon)
        adversarial_sums, _ = losses_at(delta.detach())
        adversarial = adversarial_sums.sum()
        self.add_totals(clean, adversarial, torch.as_tensor(count, device=clean.device))
        weight = cfg.adversarial_weight
        sums = (1 - weight) * clean_sums + weight * adversarial_sums
        figures = {"clean_loss": clean.detach(), "adversarial_loss": adversarial.detach()}
        if sums.dim() == 1:  # per example: the per-source training loss reports the objective trained on
            return ift.LossTerms(sums.sum(), per_example=(sums, counts), figures=figures)
        return ift.LossTerms(sums, figures=figures)


class AdversarialTrainer(ift.ObjectiveTrainer):
    """Supervised fine-tuning on clean and adversarially perturbed input embeddings: the loop with
    :class:`EmbeddingAdversarial`, and its figures in the run's summary."""

    name = "sft-adversarial"
    Config = AdversarialConfig
    config: AdversarialConfig
    objective_class = EmbeddingAdversarial

    def train(self, ctx: ift.TrainContext) -> ift.TrainResult:
        result = super().train(ctx)
        clean, adversarial, tokens = cast(EmbeddingAdversarial, self.objective(ctx)).totals(3)
        cfg = self.config
        result.summary["adversarial"] = {
            "attack": cfg.attack,
            "perturb": cfg.perturb,
            "epsilon": cfg.epsilon,
            "adversarial_weight": cfg.adversarial_weight,
            **({"pgd_steps": cfg.pgd_steps, "pgd_alpha": cfg.step_size} if cfg.attack == "pgd" else {}),
            # token means over every micro-batch this process trained on (skipped updates included)
            "clean_loss": clean / tokens if tokens else None,
            "adversarial_loss": adversarial / tokens if tokens else None,
        }
        return result


EmbeddingAdversarial.trainer = AdversarialTrainer


def input_embeddings(model: Any) -> Any:
    """The input embedding layer, under any distributed wrappers (they keep the model in ``.module``)."""
    while not hasattr(model, "get_input_embeddings") and hasattr(model, "module"):
        model = model.module
    if not hasattr(model, "get_input_embeddings"):
        raise ift.RunError(
            f"sft-adversarial needs a model with get_input_embeddings(); {type(model).__name__} has none"
        )
    return model.get_input_embeddings()


class EmbeddingAttack:
    """A perturbation of one embedding layer's output for one batch of ``input_ids``, in one of two spaces:
    rows of the embedding matrix (``weights``) or token positions (``positions``)."""

    def __init__(self, module: Any, input_ids: Any, perturb: str) -> None:
        import torch

        self.module, self.input_ids, self.perturb = module, input_ids, perturb
        if perturb == "weights":
            self.rows, self.index = torch.unique(input_ids, return_inverse=True)
        self.width = _embedding_width(module)

    def zeros(self) -> Any:
        import torch

        shape = (len(self.rows), self.width) if self.perturb == "weights" else (*self.input_ids.shape, self.width)
        return torch.zeros(shape, dtype=torch.float32, device=self.input_ids.device)

    def spread(self, delta: Any) -> Any:
        """The perturbation of each position's embedding."""
        return delta[self.index] if self.perturb == "weights" else delta

    def norm(self, delta: Any) -> Any:
        """L2 norm over the whole matrix perturbation, or per sequence (broadcastable to ``delta``)."""
        if self.perturb == "weights":
            return delta.norm()
        return delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))

    def unit(self, grad: Any) -> Any:
        """``grad / ||grad||`` (zero where the gradient is zero, not NaN)."""
        return grad / self.norm(grad).clamp_min(1e-12)

    def project(self, delta: Any, radius: float) -> Any:
        """``delta`` pulled back onto the ball of the given radius where it lies outside."""
        return delta * (radius / self.norm(delta).clamp_min(1e-12)).clamp(max=1.0)

    def added(self, delta: Any) -> _Hooked:
        """A context in which the layer's output has ``spread(delta)`` added."""
        expected = tuple(self.input_ids.shape)

        def hook(module: Any, args: Any, output: Any) -> Any:
            if tuple(output.shape[:-1]) != expected:
                raise ift.RunError(
                    f"the input embedding layer returned shape {tuple(output.shape)} for input_ids "
                    f"of shape {expected}; sft-adversarial needs a model that embeds input_ids "
                    "once, position by position"
                )
            return output + self.spread(delta).to(output.dtype)

        return _Hooked(lambda: self.module.register_forward_hook(hook, prepend=True))


class _Hooked:
    """Installs a forward hook for the duration of a ``with`` block, and always removes it."""

    def __init__(self, install: Callable[[], Any]) -> None:
        self.install = install

    def __enter__(self) -> None:
        self.handle = self.install()

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _embedding_width(module: Any) -> int:
    for attribute in ("embedding_dim", "weight"):
        value = getattr(module, attribute, None)
        if isinstance(value, int):
            return value
        if value is not None and getattr(value, "dim", lambda: 0)() == 2:
            return int(value.shape[1])
    base = getattr(module, "base_layer", None)  # adapter wrappers (peft) keep the original layer here
    if base is not None:
        return _embedding_width(base)
    raise ift.RunError(f"cannot tell the width of the input embedding layer {type(module).__name__}")
