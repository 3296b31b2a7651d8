"""``ift.train``: the training loop every builtin trainer runs, public for trainers of your own.

The loop owns epochs, batches (:mod:`ift.batching`), exact token-normalised gradient accumulation across
micro-batches and processes (the engine is ``accelerate``), clipping, non-finite handling, the PEFT method's own
training penalty, the evaluation schedule, early stopping, checkpoints and bitwise-exact resume, preemption and the
logged figures. What it minimises comes from an :class:`ift.Objective`; what happens around each step can be
observed or steered with :class:`Callback` objects; the optimizer and the learning-rate schedule are built by
factories (:data:`OptimizerFactory`, :data:`SchedulerFactory`) that a trainer may replace.

torch, accelerate and transformers are imported inside functions: ``import ift`` stays light.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ift import faults
from ift.callbacks import Callback, EarlyStoppingCallback, LoopState, Position
from ift.config import TrainerConfig
from ift.early_stopping import EarlyStopping, metric_direction
from ift.errors import Preempted, Problem, RecipeError, RunError

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = [
    "Callback",
    "LoopState",
    "OptimizerFactory",
    "SchedulerFactory",
    "TrainingConfig",
    "adamw",
    "checkpointing",
    "early_stopping_callback",
    "forward_tokens",
    "resolve_batching",
    "sequence_loader",
    "train",
    "warmup_then_decay",
]

if TYPE_CHECKING:
    from ift.components import EncodedExample, ModelAdapter
    from ift.objectives import Objective
    from ift.training import TrainContext, TrainResult


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
        "the tokens whose kept activations fit in about 512 MiB (estimated from the model's shape); on a GPU, "
        "none. none: one pass per micro-batch.",
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


def train(
    ctx: TrainContext,
    objective: Objective,
    config: TrainingConfig,
    *,
    callbacks: Sequence[Callback] = (),
    optimizer: OptimizerFactory = adamw,
    scheduler: SchedulerFactory = warmup_then_decay,
    loader: Callable[[TrainContext, str], Any] | None = None,
    examples: Sequence[EncodedExample] | None = None,
) -> TrainResult:
    """Train ``ctx.model`` on ``ctx.train_examples`` by minimising ``objective``, as ``config`` says.

    ``examples`` are the sequence examples to train on when they are not ``ctx.train_examples`` (a trainer that
    adds data, as ``continual`` adds replayed examples): the default loader batches them and the per-source and
    per-task figures count them; a given ``loader`` should batch the same ones. Batches come from the
    objective's own ``loader(ctx, mode)`` when it has one, else from ``loader(ctx, mode)`` when given, else from
    :func:`sequence_loader`; ``mode`` is the resolved ``trainer.batching``. A loader is a
    DataLoader whose ``batch_sampler`` has ``select(epoch, skip=...)`` (as :class:`~ift.batching.BatchPlan` does,
    so a resume continues exactly). Returns the trained model (unwrapped) and the summary for ``metrics.json``."""
    return _Loop(ctx, objective, config, list(callbacks), optimizer, scheduler, loader, examples).run()


#: What a checkpoint's position holds besides the callbacks' states (each under its callback's name).
RESERVED = frozenset({"loop", "meter", "seconds", "trainer"})


class _Loop:
    def __init__(
        self,
        ctx: TrainContext,
        objective: Objective,
        config: TrainingConfig,
        callbacks: list[Callback],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        loader: Callable[[TrainContext, str], Any] | None,
        examples: Sequence[EncodedExample] | None = None,
    ) -> None:
        self.ctx, self.objective, self.cfg = ctx, objective, config
        self.examples = ctx.train_examples if examples is None else examples
        self.make_optimizer, self.make_scheduler, self.given_loader = optimizer, scheduler, loader
        stopping = early_stopping_callback(ctx, config)
        self.callbacks = ([stopping] if stopping is not None else []) + callbacks
        names = [c.name for c in self.callbacks]
        for name in names:
            if not name or name in RESERVED or names.count(name) > 1:
                classes = ", ".join(type(c).__name__ for c in self.callbacks if c.name == name)
                raise RunError(
                    f"callback {name!r} ({classes}): every callback needs a name of its own, not one of "
                    f"{', '.join(sorted(RESERVED))} (its state is kept under that name in checkpoints)"
                )

    def run(self) -> TrainResult:  # noqa: C901 - the loop, top to bottom
        import torch
        from accelerate import Accelerator

        from ift.examples import sources as example_sources
        from ift.examples import tasks as example_tasks
        from ift.meter import TrainMeter
        from ift.training import TrainResult

        ctx, cfg, objective, callbacks = self.ctx, self.cfg, self.objective, self.callbacks
        model = ctx.model
        checkpointed = checkpointing(ctx, cfg)
        if checkpointed:
            ctx.adapter.enable_gradient_checkpointing(model)
        device = next(model.parameters()).device
        if device.type == "cpu":
            from ift.allocator import tune_for_training

            tune_for_training()
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=device.type == "cpu")
        objective.ctx, objective.training = ctx, cfg
        objective.setup(ctx, model)
        mode = resolve_batching(cfg.batching, ctx.adapter, device)
        loader = objective.loader(ctx, mode)
        loader_is_sequences = loader is None
        if loader is None:
            loader = (
                self.given_loader(ctx, mode)
                if self.given_loader
                else sequence_loader(ctx, cfg, mode, self.examples, forward_tokens(ctx, cfg, objective))
            )
        plan = loader.batch_sampler
        optimizer = self.make_optimizer(model, cfg)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

        steps_per_epoch = max(1, math.ceil(len(loader) / cfg.gradient_accumulation_steps))
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        scheduler = self.make_scheduler(optimizer, total, cfg)
        ctx.progress.total = total
        # every process lists the sources and tasks in the same order: the per-group totals are reduced
        # position-wise. Examples without a task count under no task (left out of the per-task figures).
        meter = TrainMeter(
            accelerator,
            device,
            model,
            cfg.max_length,
            {
                "source": sorted(set(example_sources(self.examples))),
                "task": sorted({t for t in example_tasks(self.examples) if t is not None}),
            },
        )
        loop = Position()
        state = LoopState(
            loop,
            total,
            steps_per_epoch,
            model,
            optimizer,
            accelerator.is_main_process,
            accelerator=accelerator,
            progress=ctx.progress,
        )
        trained_before = 0.0  # seconds trained before the checkpoint resumed from: the clock runs on from there
        if ctx.resume_from is not None:
            from ift.checkpoint import load_checkpoint

            saved = load_checkpoint(
                ctx.resume_from, model=accelerator.unwrap_model(model), optimizer=optimizer, scheduler=scheduler
            )
            position = saved["position"]
            loop = state.position = Position(**position["loop"])
            trained_before = float(position.get("seconds", 0.0))
            meter.restore(position["meter"])
            objective.load_state(position.get("trainer"))
            for callback in callbacks:
                callback.load_state(position.get(callback.name))
            ctx.progress.write(
                f"resumed from {ctx.resume_from.name}: step {loop.step}, epoch {loop.epoch}, "
                f"{loop.consumed} batches into the epoch"
            )

        def checkpoint() -> None:
            from ift.checkpoint import rotate, save_checkpoint

            if ctx.checkpoint_dir is None or not accelerator.is_main_process:
                accelerator.wait_for_everyone()
                return
            position = {"loop": vars(loop), "meter": meter.state(), "seconds": time.perf_counter() - started}
            if (own := objective.state()) is not None:
                position["trainer"] = own
            position.update({c.name: s for c in callbacks if (s := c.state()) is not None})
            save_checkpoint(
                ctx.checkpoint_dir,
                loop.step,
                model=accelerator.unwrap_model(model),
                optimizer=optimizer,
                scheduler=scheduler,
                position=position,
                identity=ctx.identity,
                before_commit=lambda _: faults.point(f"checkpoint-write-{loop.step}"),
            )
            rotate(ctx.checkpoint_dir, cfg.keep_last)
            for callback in callbacks:
                callback.on_checkpoint(state)
            accelerator.wait_for_everyone()

        def evaluate() -> None:
            """Evaluate at this step and show the callbacks; evaluation time is kept out of the throughput."""
            began = time.perf_counter()
            result = ctx.evaluate(accelerator.unwrap_model(model), f"step-{loop.step}")
            model.train()
            for callback in callbacks:
                callback.on_evaluate(state, result or {})
            meter.start += time.perf_counter() - began

        started = time.perf_counter() - trained_before
        last_event: dict[str, Any] = {}
        stop_reason = next((r for c in callbacks if (r := c.should_stop(state))), None)  # a resumed stop
        model.train()
        for callback in callbacks:
            callback.on_train_start(state)
        while loop.step < total and stop_reason is None:
            plan.select(loop.epoch, skip=loop.consumed)
            batches = iter(loader)
            while loop.step < total:
                micro = []
                for _ in range(cfg.gradient_accumulation_steps):
                    waited = time.perf_counter()
                    batch = next(batches, None)
                    meter.wait += time.perf_counter() - waited
                    if batch is None:
                        break
                    micro.append(batch)
                if not micro:
                    break
                loaded = len(micro)
                micro = [part for b in micro for part in (b if isinstance(b, list) else [b])]  # Passes
                units = [objective.units(b) for b in micro]  # once per micro-batch: known before any forward
                n_units = int(accelerator.reduce(torch.tensor(sum(units), device=accelerator.device), reduction="sum"))
                step_loss = 0.0
                step_terms: dict[str, float] = {}
                step_groups = meter.zeros()
                unsplit = 0
                for i, batch in enumerate(micro):
                    context = accelerator.no_sync(model) if i < len(micro) - 1 else nullcontext()
                    with context, accelerator.autocast():
                        terms = objective.loss(model, batch)
                        trained = terms.trained()
                        penalty = ctx.adapter.training_penalty(model)
                        if penalty is not None:  # the PEFT method's own term, once per unit: once in the mean
                            trained = trained + penalty * units[i]
                        # Divide by the units of the whole optimizer step (all micro-batches, all processes) so
                        # accumulation and data parallelism give the same gradient.
                        loss = trained * accelerator.num_processes / max(n_units, 1)
                        accelerator.backward(loss)
                    step_loss += float(trained.detach())
                    for name, value in terms.extra.items():
                        step_terms[name] = step_terms.get(name, 0.0) + float(value.detach())
                    for name, value in terms.figures.items():
                        step_terms[f"figure:{name}"] = step_terms.get(f"figure:{name}", 0.0) + float(value)
                    if penalty is not None:
                        step_terms["peft_penalty"] = (
                            step_terms.get("peft_penalty", 0.0) + float(penalty.detach()) * units[i]
                        )
                    split = terms.per_example
                    if not (
                        split is not None
                        and meter.add_examples(step_groups, batch, split[0].detach(), split[1].detach())
                    ):
                        unsplit += 1
                    faults.point(f"micro-{loop.step + 1}-{i}")
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf))
                loop.consumed += loaded * accelerator.num_processes
                if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                    ids = [rid for b in micro for rid in b.get("record_ids", [])]
                    if loop.skipped >= cfg.skip_nonfinite_steps:
                        raise RunError(
                            f"non-finite {'loss' if not math.isfinite(step_loss) else 'gradient norm'} at step "
                            f"{loop.step + 1} (examples {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}); "
                            "lower trainer.learning_rate, check these examples, or allow a few skips with "
                            "trainer.skip_nonfinite_steps"
                        )
                    loop.skipped += 1  # the update is skipped; the data is consumed, the schedule moves on
                    ctx.progress.write(
                        f"step {loop.step + 1}: non-finite loss or gradient, update skipped "
                        f"({loop.skipped}/{cfg.skip_nonfinite_steps})"
                    )
                else:
                    for batch, n in zip(micro, units, strict=True):
                        meter.add_batch(batch, n)
                    meter.loss += step_loss
                    meter.add_terms(step_terms)
                    meter.add_groups(step_groups, unsplit)
                    optimizer.step()
                    ctx.adapter.on_optimizer_step(accelerator.unwrap_model(model), loop.step + 1, total)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loop.step += 1
                # A step's evaluation comes before its checkpoint, so a resume from this step neither redoes nor
                # misses it. Its event comes first (observers see step_end, then evaluate_end), except when a
                # callback reports on the evaluation in the event (early stopping): then the event follows it.
                due = bool(cfg.eval_every and loop.step % cfg.eval_every == 0 and loop.step < total)
                due = any([c.should_evaluate(state) for c in callbacks]) or due
                first = due and any(c.evaluates_first for c in callbacks)
                if first:
                    evaluate()
                extra: dict[str, Any] = {}
                for callback in callbacks:
                    extra.update(callback.on_step_end(state) or {})
                if loop.step % cfg.log_every == 0 or loop.step == total or extra:
                    last_event = meter.event(
                        loop.step, round(loop.step / steps_per_epoch, 4), scheduler.get_last_lr()[0], grad_norm, started
                    )
                    last_event.update(extra)
                    state.last_event = last_event
                    ctx.log_step(last_event)
                else:
                    ctx.progress.step(loop.step)
                if due and not first:
                    evaluate()
                stop_reason = next((r for c in callbacks if (r := c.should_stop(state))), None)
                if stop_reason is not None:
                    ctx.progress.write(stop_reason)
                    break
                if cfg.save_every and loop.step % cfg.save_every == 0 and loop.step < total:
                    checkpoint()
                faults.point(f"step-{loop.step}")
                if ctx.should_stop():
                    checkpoint()
                    raise Preempted(
                        f"stopped by a signal at step {loop.step}; checkpoint saved, "
                        "continue with: ift run RECIPE --output-dir RUN_DIR --resume"
                    )
            else:
                continue  # max steps reached inside the epoch
            if stop_reason is not None:
                break
            loop.epoch += 1
            loop.consumed = 0
        model.eval()
        seconds = time.perf_counter() - started
        summary = {
            "train_loss": last_event.get("loss"),
            "epochs": round(loop.step / steps_per_epoch, 4),
            "train_seconds": round(seconds, 2),
            "batching": mode,
            "gradient_checkpointing": checkpointed,
            "max_tokens_per_forward": forward_tokens(ctx, cfg, objective) if loader_is_sequences else None,
            "skipped_nonfinite_steps": loop.skipped,
            **meter.totals(seconds),
        }
        if stop_reason is not None:
            summary["stopped"] = stop_reason
        for callback in callbacks:
            callback.on_train_end(state, summary)
        return TrainResult(model=accelerator.unwrap_model(model), steps=loop.step, summary=summary)


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
