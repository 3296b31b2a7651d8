"""The preference objectives ``dpo``, ``orpo`` and ``kto`` (docs/preference.md).

Each is an :class:`ift.Objective` whose unit of loss is a pair (``kto``: an example). Sequence log-probabilities
are the adapter's per-example summed NLL over trained positions (the completion), negated, from its chunked
path (:meth:`ift.ModelAdapter.loss_by_example`), so no ``[tokens x vocab]`` tensor exists at once.

The reference model (``dpo``, ``kto``) is the starting model, never a second copy of it: under a PEFT adapter its
log-probabilities come from the same model with the adapter disabled (``reference = "auto"`` or
``"disabled-adapter"``), under full fine-tuning they are computed once before training, for every training and
held-out example (``"auto"`` or ``"precomputed"``; a PEFT run can ask for that too, which saves a forward pass per
step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

import ift
from ift import examples as tables
from ift.builtin_plugins.preference import losses
from ift.builtin_plugins.preference.batches import (
    Item,
    PreferenceCollator,
    make_loader,
    pair_items,
    unpaired_items,
)


class PreferenceConfig(ift.ObjectiveConfig):
    beta: float = Field(
        0.1,
        gt=0,
        description="Strength of the preference term (DPO / KTO: the KL penalty's "
        "inverse temperature; ORPO: lambda, the odds-ratio weight).",
    )


class ReferenceConfig(PreferenceConfig):
    reference: Literal["auto", "disabled-adapter", "precomputed"] = Field(
        "auto",
        description="Where the reference log-probabilities come from: the model with its PEFT adapter "
        "disabled, or computed once before training (auto: the first under PEFT, the second otherwise).",
    )


class DPOConfig(ReferenceConfig):
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="cDPO: the assumed share of pairs whose preference is flipped (0: plain DPO)."
    )


class KTOConfig(ReferenceConfig):
    desirable_weight: float = Field(1.0, gt=0, description="Weight of the desirable examples' loss.")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of the undesirable examples' loss.")


def sequence_logps(adapter: Any, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Each row's summed log-probability over its trained positions, and how many positions that is."""
    nll, counts = adapter.loss_by_example(model, {**batch, "record_ids": batch["row_ids"]})
    return -nll, counts


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {
        k: to_device(v, device) if isinstance(v, dict) else v.to(device) if hasattr(v, "to") else v
        for k, v in batch.items()
    }


class PreferenceObjective(ift.Objective):
    """What the three objectives share: their items, loader, reference log-probabilities and held-out figures."""

    examples: ClassVar[str] = "preference"
    uses_reference: ClassVar[bool] = True
    paired: ClassVar[bool] = True

    def __init__(self, config: ift.ComponentConfig) -> None:
        super().__init__(config)
        #: split ("train", "eval") -> role ("chosen", "rejected", "single", "kl") -> one float64 per item
        self.reference_logps: dict[str, dict[str, Any]] = {}
        self.adapter: Any = None
        self.tokenizer: Any = None
        self.batch_size = 8
        self._eval_collator: PreferenceCollator | None = None

    # --- data --------------------------------------------------------------------------------

    def items(self, examples: Sequence[ift.EncodedExample]) -> list[Item]:
        return pair_items(examples, self.name) if self.paired else unpaired_items(examples, self.name)

    def collator(self, examples: Sequence[ift.EncodedExample]) -> PreferenceCollator:
        return PreferenceCollator(
            self.adapter, self.tokenizer, examples, self.items(examples), kl_partners=not self.paired
        )

    def loader(self, ctx: ift.TrainContext, mode: str) -> Any:
        """Batches of ``ctx.train_examples`` (see :mod:`.batches`)."""
        self._bind(ctx)
        return make_loader(
            self._train_collator,
            mode=mode,
            batch_size=self.batch_size,
            seed=ctx.seed,
            shuffle=bool(self._loop_setting("shuffle", True)),
        )

    def units(self, batch: Any) -> int:
        return int(batch["pairs"])

    def _bind(self, ctx: ift.TrainContext) -> None:
        if self.adapter is None:
            self.adapter, self.tokenizer = ctx.adapter, ctx.tokenizer
            self.batch_size = int(self._loop_setting("batch_size", 8))
        if getattr(self, "_train_collator", None) is None:
            self._train_collator = self.collator(ctx.train_examples)

    def _loop_setting(self, name: str, default: Any) -> Any:
        """A key of the training loop's configuration (``batch_size``, ``shuffle``): the trainer hands its
        config over as :attr:`training`."""
        return getattr(self.training, name, default) if self.training is not None else default

    # --- reference ---------------------------------------------------------------------------

    def setup(self, ctx: ift.TrainContext, model: Any) -> None:
        """Check the training examples, and compute their reference log-probabilities when precomputed."""
        self._bind(ctx)
        self._choose_reference(model)
        if self.precomputed:
            self.reference_logps["train"] = self._all_logps(model, self._train_collator)

    def start_evaluation(self, ctx: ift.TrainContext, model: Any) -> dict[str, Any]:
        """Prepare the held-out figures (the eval examples' reference log-probabilities when precomputed) and
        return them for ``model`` as it is: the figures before training. Empty without eval examples."""
        self.adapter, self.tokenizer = ctx.adapter, ctx.tokenizer
        self.batch_size = int(self._loop_setting("batch_size", 8))
        self._eval_collator = self.collator(ctx.eval_examples) if len(ctx.eval_examples) else None
        self._choose_reference(model)
        if self._eval_collator is None:
            return {}
        if self.precomputed:
            self.reference_logps["eval"] = self._all_logps(model, self._eval_collator)
        return self.evaluate(model)

    def _choose_reference(self, model: Any) -> None:
        mode = getattr(self.config, "reference", "auto")
        peft = hasattr(model, "disable_adapter")
        self.precomputed = self.uses_reference and (mode == "precomputed" or (mode == "auto" and not peft))
        if self.uses_reference and mode == "disabled-adapter" and not peft:
            raise ift.RecipeError(
                [
                    ift.Problem(
                        "trainer.reference",
                        "'disabled-adapter' needs a PEFT adapter "
                        "([model] peft = ...); without one use 'auto' or 'precomputed'",
                    )
                ]
            )

    @contextlib.contextmanager
    def _reference_mode(self, model: Any) -> Any:
        with contextlib.ExitStack() as stack:
            if self.uses_reference and not getattr(self, "precomputed", True):
                stack.enter_context(model.disable_adapter())
            yield

    def _all_logps(self, model: Any, collator: PreferenceCollator) -> dict[str, Any]:
        """Every item's log-probabilities with ``model`` as it is: role -> a numpy array in item order (8 bytes
        per sequence: a million pairs take 16 MB)."""
        import numpy as np
        import torch

        out: dict[str, Any] = {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(collator.items), self.batch_size):
                    positions = list(range(start, min(start + self.batch_size, len(collator.items))))
                    batch = to_device(collator(positions), _device(model))
                    for key, values in self._logps(model, batch).items():
                        column = out.setdefault(key, np.zeros(len(collator.items), dtype=np.float64))
                        column[start : start + len(positions)] = values.double().cpu().numpy()
        finally:
            model.train(was_training)
        return out

    def _logps(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """Summed log-probabilities of the batch's sequences by role (``chosen``/``rejected``, or ``single`` and
        ``kl``)."""
        logps, _ = sequence_logps(self.adapter, model, batch)
        if "chosen_rows" in batch:
            return {"chosen": logps[batch["chosen_rows"]], "rejected": logps[batch["rejected_rows"]]}
        out = {"single": logps}
        if "kl" in batch:
            out["kl"] = sequence_logps(self.adapter, model, batch["kl"])[0]
        return out

    def reference(self, model: Any, batch: dict[str, Any], split: str = "train") -> dict[str, Any]:
        """The reference log-probabilities of a batch: looked up when precomputed, else the model's own with the
        adapter disabled (no gradient)."""
        import torch

        if self.precomputed:
            table = self.reference_logps[split]
            keys = (
                ("chosen", "rejected") if "chosen_rows" in batch else ("single", "kl") if "kl" in batch else ("single",)
            )
            device = batch["input_ids"].device
            return {
                key: torch.as_tensor(table[key][batch["index"]], dtype=torch.float32, device=device) for key in keys
            }
        with torch.no_grad(), self._reference_mode(model):
            return self._logps(model, batch)

    # --- held-out figures ----------------------------------------------------------------------

    def evaluate(self, model: Any) -> dict[str, Any]:
        """Reward accuracy, reward margin and the chosen / rejected log-probabilities on the held-out examples,
        overall and (several sources) per source in ``per_source``."""
        import torch

        collator = self._eval_collator
        if collator is None:
            return {}
        names = tables.sources(collator.examples)
        groups: dict[str, list[int]] = {}
        for position, item in enumerate(collator.items):
            groups.setdefault(names[item.index], []).append(position)
        per_source: dict[str, tuple[dict[str, float], int]] = {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for source, members in groups.items():
                    sums: dict[str, float] = {}
                    for start in range(0, len(members), self.batch_size):
                        batch = to_device(collator(members[start : start + self.batch_size]), _device(model))
                        for name, value in self.figures(model, batch, "eval").items():
                            sums[name] = sums.get(name, 0.0) + float(value)
                    per_source[source] = (sums, len(members))
        finally:
            model.train(was_training)
        total: dict[str, float] = {}
        for sums, _ in per_source.values():
            for name, value in sums.items():
                total[name] = total.get(name, 0.0) + value
        out = self._rounded(total, len(collator.items))
        if len(per_source) > 1:
            out["per_source"] = {source: self._rounded(dict(sums), n) for source, (sums, n) in per_source.items()}
        return out

    def _rounded(self, sums: dict[str, float], units: int) -> dict[str, Any]:
        return {**{name: round(value, 6) for name, value in self.summarize(dict(sums), units).items()}, "n": units}

    def summarize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        """Held-out figures from their sums over ``units`` pairs: means per pair."""
        return {name: value / units for name, value in sums.items()}

    def figures(self, model: Any, batch: dict[str, Any], split: str) -> dict[str, Any]:
        """Summed figures of one batch (overridden by each objective)."""
        return self.loss_and_figures(model, batch, split).figures

    def loss(self, model: Any, batch: dict[str, Any]) -> ift.LossTerms:
        return self.loss_and_figures(model, to_device(batch, _device(model)), "train")

    def loss_and_figures(self, model: Any, batch: dict[str, Any], split: str) -> ift.LossTerms:
        raise NotImplementedError


def pair_figures(chosen: Any, rejected: Any, chosen_rewards: Any, rejected_rewards: Any) -> dict[str, Any]:
    margins = chosen_rewards - rejected_rewards
    return {
        "reward_accuracy": (margins > 0).float().sum(),
        "reward_margin": margins.sum(),
        "chosen_reward": chosen_rewards.sum(),
        "rejected_reward": rejected_rewards.sum(),
        "chosen_logp": chosen.detach().sum(),
        "rejected_logp": rejected.detach().sum(),
        "logp_accuracy": (chosen.detach() > rejected.detach()).float().sum(),
    }


class DPOObjective(PreferenceObjective):
    """Direct preference optimisation (sigmoid loss, optional cDPO label smoothing)."""

    name = "dpo"
    Config = DPOConfig
    config: DPOConfig

    def loss_and_figures(self, model: Any, batch: dict[str, Any], split: str) -> ift.LossTerms:
        ref = self.reference(model, batch, split)
        policy = self._logps(model, batch)
        out = losses.dpo(
            policy["chosen"],
            policy["rejected"],
            ref["chosen"],
            ref["rejected"],
            beta=self.config.beta,
            label_smoothing=self.config.label_smoothing,
        )
        return ift.LossTerms(
            out.losses.sum(),
            per_example=(out.losses, _ones(out.losses)),
            figures=pair_figures(policy["chosen"], policy["rejected"], out.chosen_rewards, out.rejected_rewards),
        )


class ORPOObjective(PreferenceObjective):
    """Odds-ratio preference optimisation: NLL on the chosen completion plus the odds-ratio term; no reference."""

    name = "orpo"
    Config = PreferenceConfig
    config: PreferenceConfig
    uses_reference = False

    def loss_and_figures(self, model: Any, batch: dict[str, Any], split: str) -> ift.LossTerms:
        logps, counts = sequence_logps(self.adapter, model, batch)
        counts = counts.clamp(min=1).to(logps.dtype)
        chosen, rejected = logps[batch["chosen_rows"]], logps[batch["rejected_rows"]]
        chosen_mean = chosen / counts[batch["chosen_rows"]]
        rejected_mean = rejected / counts[batch["rejected_rows"]]
        out, log_odds = losses.orpo(chosen_mean, rejected_mean, -chosen_mean, beta=self.config.beta)
        figures = pair_figures(chosen, rejected, out.chosen_rewards, out.rejected_rewards)
        figures.update(log_odds_ratio=log_odds.sum(), chosen_nll=(-chosen_mean).detach().sum())
        return ift.LossTerms(out.losses.sum(), per_example=(out.losses, _ones(out.losses)), figures=figures)


class KTOObjective(PreferenceObjective):
    """Kahneman-Tversky optimisation on unpaired desirable / undesirable completions (pairs count as one of
    each)."""

    name = "kto"
    Config = KTOConfig
    config: KTOConfig
    paired = False

    def __init__(self, config: ift.ComponentConfig) -> None:
        super().__init__(config)
        self.last_kl = 0.0

    def loss_and_figures(self, model: Any, batch: dict[str, Any], split: str) -> ift.LossTerms:
        import torch

        ref = self.reference(model, batch, split)
        logps, _ = sequence_logps(self.adapter, model, batch)
        with torch.no_grad():
            policy_kl = sequence_logps(self.adapter, model, batch["kl"])[0]
        desirable = batch["desirable"].to(logps.device)
        if len(batch["index"]) > 1:  # one example has no other completion to borrow: keep the last estimate
            kl = (policy_kl - ref["kl"]).mean().clamp(min=0)
            if split == "train":
                self.last_kl = float(kl)
        else:
            kl = torch.tensor(self.last_kl, device=logps.device)
        per, rewards = losses.kto(
            logps,
            ref["single"],
            desirable,
            kl,
            beta=self.config.beta,
            desirable_weight=self.config.desirable_weight,
            undesirable_weight=self.config.undesirable_weight,
        )
        sign = torch.where(desirable, rewards, -rewards)
        n = len(batch["index"])
        figures = {
            "reward_accuracy": (sign > 0).float().sum(),
            "kl": kl.detach() * n,
            "desirable_reward": rewards[desirable].sum(),
            "undesirable_reward": rewards[~desirable].sum(),
            "desirable_logp": logps.detach()[desirable].sum(),
            "undesirable_logp": logps.detach()[~desirable].sum(),
            "desirable": desirable.float().sum(),
        }
        return ift.LossTerms(per.sum(), per_example=(per, _ones(per)), figures=figures)

    def summarize(self, sums: dict[str, float], units: int) -> dict[str, float]:
        """Means per class: the chosen figures are the desirable examples', the rejected the undesirable ones';
        the margin is the mean desirable reward minus the mean undesirable one."""
        good = sums.pop("desirable", 0.0)
        bad = units - good
        out = {"reward_accuracy": sums["reward_accuracy"] / units, "kl": sums["kl"] / units}
        chosen_reward = sums["desirable_reward"] / good if good else 0.0
        rejected_reward = sums["undesirable_reward"] / bad if bad else 0.0
        out.update(
            reward_margin=chosen_reward - rejected_reward,
            chosen_reward=chosen_reward,
            rejected_reward=rejected_reward,
            chosen_logp=sums["desirable_logp"] / good if good else 0.0,
            rejected_logp=sums["undesirable_logp"] / bad if bad else 0.0,
            desirable=good,
            undesirable=bad,
        )
        return out

    def state(self) -> dict[str, Any] | None:
        return {"last_kl": self.last_kl}

    def load_state(self, state: dict[str, Any] | None) -> None:
        self.last_kl = float((state or {}).get("last_kl", 0.0))


def _ones(values: Any) -> Any:
    import torch

    return torch.ones_like(values, dtype=torch.long)


def _device(model: Any) -> Any:
    return next(model.parameters()).device
