"""What :func:`ift.train` is given, and the choices it makes before its first step: the trainer configuration
(:class:`TrainingConfig`), the default optimizer and learning-rate schedule and their factory types, the batching
mode, the forward-pass budget and activation checkpointing, the default sequence loader and the early-stopping
callback. Every public name here is re-exported by :mod:`ift.engine`, the module to import them from.

torch, accelerate and transformers are imported inside functions: ``import ift`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ift.callbacks import EarlyStoppingCallback
from ift.config import TrainerConfig
from ift.early_stopping import EarlyStopping, metric_direction
from ift.errors import Problem, RecipeError

if TYPE_CHECKING:
    from ift.components import EncodedExample, ModelAdapter
    from ift.objectives import Objective
    from ift.training import TrainContext


class TrainingConfig(TrainerConfig):
    """The loop's keys (``[trainer]`` of ``sft`` and of every trainer built on :func:`train`)."""

    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_tokens_per_forward: int | Literal["auto", "none"] = Field(
        "auto",
        description="Run each micro-batch as several forward/backward passes of whole examples holding at most "
        "this many (padded) tokens each: the same loss and gradient, less activation memory. auto: on a CPU, "
        "the tokens whose kept activations fit in about 256 MiB, 128 MiB with gradient checkpointing "
        "(estimated from the model's shape); on a GPU, none. none: one pass per micro-batch.",
    )
    max_grad_norm: float | None = Field(1.0, gt=0)
    log_every: int = Field(10, gt=0)
    eval_every: int | None = Field(None, gt=0, description="Evaluate every N optimizer steps.")
    save_every: int | None = Field(None, gt=0, description="Checkpoint every N optimizer steps.")
    keep_last: int = Field(2, gt=0, description="Committed checkpoints to keep.")
    skip_nonfinite_steps: int = Field(
        0, ge=0, description="Updates with a non-finite loss/gradient to skip before stopping the run."
    )
    shuffle: bool = Field(True, description="false: batches in data order (no length grouping either).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, fp32 otherwise."
    )
    early_stopping_metric: str | None = Field(
        None,
        description="Track this metric of the periodic evaluations (one of eval.metrics; needs eval_every): "
        "stop when it stops improving, keep the best weights. Its direction comes from the metric.",
    )
    early_stopping_patience: int = Field(
        3,
        ge=0,
        description="Evaluations in a row without improvement before "
        "stopping; 0: never stop, only keep the best weights.",
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="Smallest change of the metric (in its own units) that counts as an improvement."
    )
    keep_best: bool = Field(
        True,
        description="The saved and finally evaluated model is the best evaluated one, "
        "not the last (with early_stopping_metric).",
    )
    _higher_is_better: bool | None = PrivateAttr(None)

    @field_validator("max_tokens_per_forward")
    @classmethod
    def _positive_tokens(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value <= 0:
            raise ValueError("must be a positive number of tokens, 'auto' or 'none'")
        return value

    @field_validator("early_stopping_metric")
    @classmethod
    def _metric_is_evaluated(cls, value: str | None, info: ValidationInfo) -> str | None:
        from ift.host import did_you_mean

        if value is None:
            return value
        if "eval_every" in info.data and info.data["eval_every"] is None:
            raise ValueError(
                "needs trainer.eval_every: early stopping compares the periodic evaluations (e.g. eval_every = 50)"
            )
        section = (info.context or {}).get("eval")
        if section is not None and value not in section.metrics:
            computed = ", ".join(section.metrics) or "none"
            raise ValueError(
                f"{value!r} is not computed by the evaluation{did_you_mean(value, section.metrics)}: "
                f"add it to eval.metrics (now: {computed})"
            )
        return value

    @field_validator("early_stopping_patience", "early_stopping_min_delta", "keep_best")
    @classmethod
    def _needs_metric(cls, value: Any, info: ValidationInfo) -> Any:
        if "early_stopping_metric" in info.data and info.data["early_stopping_metric"] is None:
            raise ValueError(
                "is used only with trainer.early_stopping_metric, which is not set "
                '(e.g. early_stopping_metric = "loss")'
            )
        return value

    @model_validator(mode="after")
    def _early_stopping_direction(self, info: ValidationInfo) -> TrainingConfig:
        """Take the direction from the registered metric class while the plugin host is at hand."""
        host = (info.context or {}).get("host")
        if self.early_stopping_metric is not None and host is not None:
            registered = host.registry["metric"].get(self.early_stopping_metric)
            if registered is not None:
                self._higher_is_better = bool(registered.cls.higher_is_better)
        return self

    def early_stopping_direction(self) -> bool:
        """Whether a higher value of ``early_stopping_metric`` is better."""
        assert self.early_stopping_metric is not None
        if self._higher_is_better is None:
            self._higher_is_better = metric_direction(self.early_stopping_metric)
        return self._higher_is_better


#: Builds the optimizer for the trainable parameters: ``factory(model, config)``.
OptimizerFactory = Callable[[Any, TrainingConfig], Any]
#: Builds the learning-rate schedule: ``factory(optimizer, total_steps, config)``.
SchedulerFactory = Callable[[Any, int, TrainingConfig], Any]


#: Devices whose parameters torch's fused AdamW kernel updates (torch.optim.AdamW's ``fused`` documentation).
_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def adamw(model: Any, config: TrainingConfig) -> Any:
    """The default optimizer: AdamW, weight decay on matrices only (not on biases and norms).

    Torch's fused kernel where every trainable parameter allows it (a plain floating-point tensor on a CPU or
    an accelerator): on a CPU the default implementation loops over the parameters in Python, 0.5-0.9 s per step
    for SmolLM2-135M on 2 cores against 0.08 s fused (measured 2026-12-06). Same update, the arithmetic in
    another order (float tolerance)."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    fused = bool(trainable) and all(
        type(p) is torch.nn.Parameter and p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in trainable
    )
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=config.adam_betas,
        **({"fused": True} if fused else {}),
    )


def warmup_then_decay(optimizer: Any, total_steps: int, config: TrainingConfig) -> Any:
    """The default schedule: linear warmup over ``warmup_ratio`` of the steps, then ``scheduler``'s decay."""
    from transformers import get_scheduler

    return get_scheduler(
        config.scheduler,
        optimizer,
        num_warmup_steps=int(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


def resolve_batching(requested: str, adapter: ModelAdapter, device: Any) -> str:
    """``auto``: padding-free where the adapter packs and a GPU runs variable-length attention; on a CPU,
    length-grouped batches (a padding-free row makes one long attention matrix there, which costs more than
    the little padding that length grouping leaves)."""
    if requested != "auto":
        if requested in ("padding-free", "packing") and not adapter.supports_packing:
            raise RecipeError(
                [
                    Problem(
                        "trainer.batching",
                        f"{requested!r} needs an adapter that supports packed batches; {adapter.name!r} does not",
                    )
                ]
            )
        return requested
    if adapter.supports_packing and getattr(device, "type", "cpu") == "cuda":
        return "padding-free"
    return "length-grouped"


def forward_tokens(ctx: TrainContext, config: TrainingConfig, objective: Objective) -> int | None:
    """The tokens one forward pass may hold (``[trainer] max_tokens_per_forward`` resolved for ``ctx.model`` on its
    device, :func:`ift.batching.forward_token_budget`), or None for one pass per micro-batch, as
    :func:`sequence_loader` takes it. An objective whose loss couples the examples of a micro-batch
    (:meth:`~ift.Objective.splits` false) is never split; asking for a number of tokens then is a recipe error."""
    from ift.batching import forward_token_budget

    requested = config.max_tokens_per_forward
    if not objective.splits():
        if isinstance(requested, int):
            raise RecipeError(
                [
                    Problem(
                        "trainer.max_tokens_per_forward",
                        f"the {objective.name!r} objective couples the examples of a micro-batch (its loss is not a "
                        "sum over examples), so a micro-batch cannot be split; remove the key or lower "
                        "trainer.batch_size",
                    )
                ]
            )
        return None
    if ctx.model is None:  # a loader built to look at its batches, with no model to size passes for
        return requested if isinstance(requested, int) else None
    device = next(ctx.model.parameters()).device
    checkpointed = checkpointing(ctx, config)
    return forward_token_budget(requested, ctx.model, device.type, _element_bytes(config, device.type), checkpointed)


def _element_bytes(config: TrainingConfig, device_type: str) -> int:
    return 4 if config.precision == "fp32" or (config.precision == "auto" and device_type == "cpu") else 2


def checkpointing(ctx: TrainContext, config: TrainingConfig) -> bool:
    """``[trainer] gradient_checkpointing`` resolved: ``auto`` is on where the adapter and the model support it
    and :func:`ift.batching.checkpoints_by_default` says so (a CPU, an example's activations over the budget of a
    forward pass)."""
    from ift.batching import checkpoints_by_default

    if config.gradient_checkpointing != "auto":
        return bool(config.gradient_checkpointing)
    model = ctx.model
    if model is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not (ctx.adapter.supports_gradient_checkpointing and getattr(base, "supports_gradient_checkpointing", False)):
        return False
    device = next(model.parameters()).device
    return checkpoints_by_default(model, device.type, _element_bytes(config, device.type), config.max_length)


def sequence_loader(
    ctx: TrainContext,
    config: TrainingConfig,
    mode: str,
    examples: Sequence[EncodedExample] | None = None,
    forward_tokens: int | None = None,
) -> Any:
    """The loader of sequence ``examples`` (``ctx.train_examples`` by default): a DataLoader whose
    ``batch_sampler`` is a :class:`~ift.batching.BatchPlan`; examples become batches per ``mode``. It has a
    generator of its own so that starting an epoch never draws from the global RNG (which dropout uses, and
    which a resume restores). Each batch also carries ``sources``, the [[data]] table name of each example in
    ``record_ids`` order, and ``tasks``, each example's task or None. With ``forward_tokens`` a micro-batch that
    holds more tokens is collated as :class:`~ift.batching.Passes` of whole examples (packed rows in ``packing``
    mode) of at most that many tokens each (:func:`~ift.batching.split_for_passes`)."""
    import torch
    from torch.utils.data import DataLoader

    from ift.batching import BatchPlan, Passes, pack_best_fit_decreasing, split_for_passes
    from ift.examples import PackedRows
    from ift.examples import lengths as example_lengths

    adapter, tokenizer = ctx.adapter, ctx.tokenizer

    def loader(dataset: Any, plan: BatchPlan, collate: Any) -> Any:
        return DataLoader(
            dataset,
            batch_sampler=plan,
            collate_fn=collate,  # type: ignore[arg-type]
            generator=torch.Generator().manual_seed(ctx.seed),
        )

    def packed(rows: list[list[Any]]) -> dict[str, Any]:
        return {
            **adapter.collate_packed(tokenizer, rows),
            "sources": [e.source for row in rows for e in row],
            "tasks": [e.task for row in rows for e in row],
        }

    def padded(batch: list[Any]) -> dict[str, Any]:
        return {
            **adapter.collate(tokenizer, batch),
            "sources": [e.source for e in batch],
            "tasks": [e.task for e in batch],
        }

    def tokens(e: EncodedExample) -> int:  # a seq2seq example's target is a sequence of its own
        return len(e.input_ids) + (len(e.labels) if len(e.labels) != len(e.input_ids) else 0)

    def passes(items: list[Any], costs: list[int], padded_cost: bool, collate: Any) -> Any:
        if forward_tokens is None:
            return collate(items)
        groups = split_for_passes(costs, forward_tokens, padded_cost)
        if len(groups) == 1:
            return collate(items)
        return Passes(collate([items[i] for i in group]) for group in groups)

    examples = ctx.train_examples if examples is None else examples
    lengths = example_lengths(examples)  # read from the table's offsets: no example is built here
    if mode == "packing":
        bins = PackedRows(examples, pack_best_fit_decreasing(lengths, config.max_length))
        plan = BatchPlan("padding", [1] * len(bins), config.batch_size, ctx.seed, config.shuffle)
        return loader(bins, plan, lambda rows: passes(rows, [config.max_length] * len(rows), False, packed))
    plan = BatchPlan(
        "length-grouped" if mode == "length-grouped" else "padding",
        lengths,
        config.batch_size,
        ctx.seed,
        config.shuffle,
    )
    if mode == "padding-free":
        return loader(
            examples, plan, lambda batch: passes(batch, [tokens(e) for e in batch], False, lambda b: packed([b]))
        )
    return loader(examples, plan, lambda batch: passes(batch, [tokens(e) for e in batch], True, padded))


def early_stopping_callback(ctx: TrainContext, cfg: TrainingConfig) -> EarlyStoppingCallback | None:
    """The callback for ``trainer.early_stopping_metric``, or None."""
    from ift.runtime import is_main_process

    if cfg.early_stopping_metric is None:
        return None
    if not cfg.eval_every:  # the recipe check catches this; a config built in code may not have been checked
        raise RecipeError([Problem("trainer.early_stopping_metric", "needs trainer.eval_every")])
    tracker = EarlyStopping(
        metric=cfg.early_stopping_metric,
        higher_is_better=cfg.early_stopping_direction(),
        patience=cfg.early_stopping_patience,
        min_delta=cfg.early_stopping_min_delta,
        keep_best=cfg.keep_best,
        folder=ctx.checkpoint_dir or Path(ctx.run_dir) / "checkpoints",
        main=is_main_process(),
    )
    return EarlyStoppingCallback(tracker, resume_from=ctx.resume_from)
