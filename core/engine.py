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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ift import faults
from ift.config import TrainerConfig
from ift.early_stopping import EarlyStopping, metric_direction
from ift.errors import Preempted, Problem, RecipeError, RunError

if TYPE_CHECKING:
    from ift.components import ModelAdapter
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
    max_grad_norm: float | None = Field(1.0, gt=0)
    log_every: int = Field(10, gt=0)
    eval_every: int | None = Field(None, gt=0, description="Evaluate every N optimizer steps.")
    save_every: int | None = Field(None, gt=0, description="Checkpoint every N optimizer steps.")
    keep_last: int = Field(2, gt=0, description="Committed checkpoints to keep.")
    skip_nonfinite_steps: int = Field(0, ge=0, description="Updates with a non-finite loss/gradient to skip "
                                      "before stopping the run.")
    shuffle: bool = Field(True, description="false: batches in data order (no length grouping either).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, fp32 otherwise.")
    early_stopping_metric: str | None = Field(
        None, description="Track this metric of the periodic evaluations (one of eval.metrics; needs eval_every): "
                          "stop when it stops improving, keep the best weights. Its direction comes from the metric.")
    early_stopping_patience: int = Field(3, ge=0, description="Evaluations in a row without improvement before "
                                                             "stopping; 0: never stop, only keep the best weights.")
    early_stopping_min_delta: float = Field(0.0, ge=0, description="Smallest change of the metric (in its own "
                                                                   "units) that counts as an improvement.")
    keep_best: bool = Field(True, description="The saved and finally evaluated model is the best evaluated one, "
                                              "not the last (with early_stopping_metric).")
    _higher_is_better: bool | None = PrivateAttr(None)

    @field_validator("early_stopping_metric")
    @classmethod
    def _metric_is_evaluated(cls, value: str | None, info: ValidationInfo) -> str | None:
        from ift.host import did_you_mean

        if value is None:
            return value
        if "eval_every" in info.data and info.data["eval_every"] is None:
            raise ValueError("needs trainer.eval_every: early stopping compares the periodic evaluations "
                             "(e.g. eval_every = 50)")
        section = (info.context or {}).get("eval")
        if section is not None and value not in section.metrics:
            computed = ", ".join(section.metrics) or "none"
            raise ValueError(f"{value!r} is not computed by the evaluation{did_you_mean(value, section.metrics)}: "
                             f"add it to eval.metrics (now: {computed})")
        return value

    @field_validator("early_stopping_patience", "early_stopping_min_delta", "keep_best")
    @classmethod
    def _needs_metric(cls, value: Any, info: ValidationInfo) -> Any:
        if "early_stopping_metric" in info.data and info.data["early_stopping_metric"] is None:
            raise ValueError("is used only with trainer.early_stopping_metric, which is not set "
                             "(e.g. early_stopping_metric = \"loss\")")
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


def adamw(model: Any, config: TrainingConfig) -> Any:
    """The default optimizer: AdamW, weight decay on matrices only (not on biases and norms)."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=config.learning_rate, betas=config.adam_betas)


def warmup_then_decay(optimizer: Any, total_steps: int, config: TrainingConfig) -> Any:
    """The default schedule: linear warmup over ``warmup_ratio`` of the steps, then ``scheduler``'s decay."""
    from transformers import get_scheduler

    return get_scheduler(config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


@dataclass
class Position:
    """Where training is: enough to continue exactly after a resume."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # batches (all processes) already taken from this epoch's plan
    skipped: int = 0


@dataclass
class LoopState:
    """What callbacks see: the position, the step count the run aims for, the (wrapped) model, the optimizer,
    the last logged event, and whether this is the main process."""

    position: Position
    total_steps: int
    steps_per_epoch: int
    model: Any
    optimizer: Any
    main: bool
    last_event: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Observes and steers the loop. Every method is optional.

    - :meth:`on_step_end` runs after every optimizer step, before its event is logged: return a dict to merge into
      the step's event (the step is then logged even between ``log_every`` steps);
    - :meth:`should_evaluate` asks for an evaluation at this step (on every process alike);
    - :meth:`on_evaluate` sees the result of each evaluation of the loop;
    - :meth:`should_stop` returns a reason to stop training after this step (the run then ends normally);
    - :meth:`state` / :meth:`load_state`: JSON values kept in every checkpoint, under the callback's ``name``.
    """

    name: str = ""

    def on_train_start(self, state: LoopState) -> None:  # noqa: B027 - optional
        pass

    def on_step_end(self, state: LoopState) -> dict[str, Any] | None:
        return None

    def should_evaluate(self, state: LoopState) -> bool:
        return False

    def on_evaluate(self, state: LoopState, result: dict[str, Any]) -> None:  # noqa: B027 - optional
        pass

    def should_stop(self, state: LoopState) -> str | None:
        return None

    def on_train_end(self, state: LoopState, summary: dict[str, Any]) -> None:  # noqa: B027 - optional
        pass

    def state(self) -> dict[str, Any] | None:
        return None

    def load_state(self, state: dict[str, Any] | None) -> None:  # noqa: B027 - optional
        pass


def resolve_batching(requested: str, adapter: ModelAdapter, device: Any) -> str:
    """``auto``: padding-free where the adapter packs and a GPU runs variable-length attention; on a CPU,
    length-grouped batches (a padding-free row makes one long attention matrix there, which costs more than
    the little padding that length grouping leaves)."""
    if requested != "auto":
        if requested in ("padding-free", "packing") and not adapter.supports_packing:
            raise RecipeError([Problem("trainer.batching", f"{requested!r} needs an adapter that supports packed "
                                                           f"batches; {adapter.name!r} does not")])
        return requested
    if adapter.supports_packing and getattr(device, "type", "cpu") == "cuda":
        return "padding-free"
    return "length-grouped"


def sequence_loader(ctx: TrainContext, config: TrainingConfig, mode: str) -> Any:
    """The loader of sequence examples: a DataLoader whose ``batch_sampler`` is a :class:`~ift.batching.BatchPlan`;
    examples become batches per ``mode``. It has a generator of its own so that starting an epoch never draws from
    the global RNG (which dropout uses, and which a resume restores). Each batch also carries ``sources``, the
    [[data]] table name of each example in ``record_ids`` order, and ``tasks``, each example's task or None."""
    import torch
    from torch.utils.data import DataLoader

    from ift.batching import BatchPlan, pack_best_fit_decreasing
    from ift.examples import PackedRows
    from ift.examples import lengths as example_lengths

    adapter, tokenizer = ctx.adapter, ctx.tokenizer

    def loader(dataset: Any, plan: BatchPlan, collate: Any) -> Any:
        return DataLoader(dataset, batch_sampler=plan, collate_fn=collate,  # type: ignore[arg-type]
                          generator=torch.Generator().manual_seed(ctx.seed))

    def packed(rows: list[list[Any]]) -> dict[str, Any]:
        return {**adapter.collate_packed(tokenizer, rows), "sources": [e.source for row in rows for e in row],
                "tasks": [e.task for row in rows for e in row]}

    def padded(batch: list[Any]) -> dict[str, Any]:
        return {**adapter.collate(tokenizer, batch), "sources": [e.source for e in batch],
                "tasks": [e.task for e in batch]}

    examples = ctx.train_examples
    lengths = example_lengths(examples)  # read from the table's offsets: no example is built here
    if mode == "packing":
        bins = PackedRows(examples, pack_best_fit_decreasing(lengths, config.max_length))
        plan = BatchPlan("padding", [1] * len(bins), config.batch_size, ctx.seed, config.shuffle)
        return loader(bins, plan, packed)
    plan = BatchPlan("length-grouped" if mode == "length-grouped" else "padding", lengths, config.batch_size,
                     ctx.seed, config.shuffle)
    if mode == "padding-free":
        return loader(examples, plan, lambda batch: packed([batch]))
    return loader(examples, plan, padded)


def train(ctx: TrainContext, objective: Objective, config: TrainingConfig, *,
          callbacks: Sequence[Callback] = (), optimizer: OptimizerFactory = adamw,
          scheduler: SchedulerFactory = warmup_then_decay,
          loader: Callable[[TrainContext, str], Any] | None = None) -> TrainResult:
    """Train ``ctx.model`` on ``ctx.train_examples`` by minimising ``objective``, as ``config`` says.

    Batches come from the objective's own ``loader(ctx, mode)`` when it has one, else from ``loader(ctx, mode)``
    when given, else from :func:`sequence_loader`; ``mode`` is the resolved ``trainer.batching``. A loader is a
    DataLoader whose ``batch_sampler`` has ``select(epoch, skip=...)`` (as :class:`~ift.batching.BatchPlan` does,
    so a resume continues exactly). Returns the trained model (unwrapped) and the summary for ``metrics.json``."""
    return _Loop(ctx, objective, config, list(callbacks), optimizer, scheduler, loader).run()


class _Loop:
    def __init__(self, ctx: TrainContext, objective: Objective, config: TrainingConfig,
                 callbacks: list[Callback], optimizer: OptimizerFactory, scheduler: SchedulerFactory,
                 loader: Callable[[TrainContext, str], Any] | None) -> None:
        self.ctx, self.objective, self.cfg, self.callbacks = ctx, objective, config, callbacks
        self.make_optimizer, self.make_scheduler, self.given_loader = optimizer, scheduler, loader

    def run(self) -> TrainResult:  # noqa: C901 - the loop, top to bottom
        import torch
        from accelerate import Accelerator

        from ift.examples import sources as example_sources
        from ift.examples import tasks as example_tasks
        from ift.meter import TrainMeter
        from ift.training import TrainResult

        ctx, cfg, objective = self.ctx, self.cfg, self.objective
        model = ctx.model
        if cfg.gradient_checkpointing:
            ctx.adapter.enable_gradient_checkpointing(model)
        device = next(model.parameters()).device
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision,
                                  cpu=device.type == "cpu")
        objective.ctx = ctx
        objective.setup(ctx, model)
        mode = resolve_batching(cfg.batching, ctx.adapter, device)
        loader = objective.loader(ctx, mode)
        if loader is None:
            loader = self.given_loader(ctx, mode) if self.given_loader else sequence_loader(ctx, cfg, mode)
        plan = loader.batch_sampler
        optimizer = self.make_optimizer(model, cfg)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

        steps_per_epoch = max(1, math.ceil(len(loader) / cfg.gradient_accumulation_steps))
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        scheduler = self.make_scheduler(optimizer, total, cfg)
        ctx.progress.total = total
        # every process lists the sources and tasks in the same order: the per-group totals are reduced
        # position-wise. Examples without a task count under no task (left out of the per-task figures).
        meter = TrainMeter(accelerator, device, model, cfg.max_length,
                           {"source": sorted(set(example_sources(ctx.train_examples))),
                            "task": sorted({t for t in example_tasks(ctx.train_examples) if t is not None})})
        loop = Position()
        stopping = _early_stopping(ctx, cfg, accelerator.is_main_process)
        state = LoopState(loop, total, steps_per_epoch, model, optimizer, accelerator.is_main_process)
        trained_before = 0.0  # seconds trained before the checkpoint resumed from: the clock runs on from there
        if ctx.resume_from is not None:
            from ift.checkpoint import load_checkpoint

            saved = load_checkpoint(ctx.resume_from, model=accelerator.unwrap_model(model), optimizer=optimizer,
                                    scheduler=scheduler)
            position = saved["position"]
            loop = state.position = Position(**position["loop"])
            trained_before = float(position.get("seconds", 0.0))
            meter.restore(position["meter"])
            if stopping is not None:
                stopping.restore(position.get("early_stopping"), ctx.resume_from)
            objective.load_state(position.get("trainer"))
            for callback in self.callbacks:
                callback.load_state((position.get("callbacks") or {}).get(callback.name))
            ctx.progress.write(f"resumed from {ctx.resume_from.name}: step {loop.step}, epoch {loop.epoch}, "
                               f"{loop.consumed} batches into the epoch")

        def checkpoint() -> None:
            from ift.checkpoint import rotate, save_checkpoint

            if ctx.checkpoint_dir is None or not accelerator.is_main_process:
                accelerator.wait_for_everyone()
                return
            position = {"loop": vars(loop), "meter": meter.state(), "seconds": time.perf_counter() - started}
            if stopping is not None:
                position["early_stopping"] = stopping.state()
            if (own := objective.state()) is not None:
                position["trainer"] = own
            kept = {c.name: s for c in self.callbacks if (s := c.state()) is not None}
            if kept:
                position["callbacks"] = kept
            save_checkpoint(ctx.checkpoint_dir, loop.step, model=accelerator.unwrap_model(model),
                            optimizer=optimizer, scheduler=scheduler, position=position, identity=ctx.identity,
                            before_commit=lambda _: faults.point(f"checkpoint-write-{loop.step}"))
            rotate(ctx.checkpoint_dir, cfg.keep_last)
            if stopping is not None and stopping.keep_best:
                stopping.prune()  # rotation may have dropped the last checkpoint referring to an older best
            accelerator.wait_for_everyone()

        def evaluate() -> dict[str, Any] | None:
            """Evaluate at this step; with early stopping, return the decision. Evaluation time is kept out of
            the throughput figures."""
            began = time.perf_counter()
            result = ctx.evaluate(accelerator.unwrap_model(model), f"step-{loop.step}")
            model.train()
            for callback in self.callbacks:
                callback.on_evaluate(state, result)
            decision = None
            if stopping is not None:
                # only the main process evaluates: it tells the others what it found
                found = _metric_value(result, stopping.metric) if accelerator.is_main_process else None
                if accelerator.num_processes > 1:
                    from accelerate.utils import broadcast_object_list

                    found = broadcast_object_list([found], from_process=0)[0]
                if found is None:  # nothing evaluated (an empty eval split): not counted either way
                    ctx.progress.write(f"early stopping: the evaluation at step {loop.step} gave no "
                                       f"{stopping.metric!r} (is the eval split empty?); not counted")
                else:  # a value of None (NaN) counts as no improvement
                    decision = stopping.observe(loop.step, found[0], accelerator.unwrap_model(model),
                                                can_stop=loop.step < total)
            meter.start += time.perf_counter() - began
            return decision

        started = time.perf_counter() - trained_before
        last_event: dict[str, Any] = {}
        stop_reason: str | None = None
        model.train()
        for callback in self.callbacks:
            callback.on_train_start(state)
        while loop.step < total and (stopping is None or stopping.stopped_at is None) and stop_reason is None:
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
                n_units = sum(objective.units(b) for b in micro)
                n_units = int(accelerator.reduce(torch.tensor(n_units, device=accelerator.device), reduction="sum"))
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
                            trained = trained + penalty * objective.units(batch)
                        # Divide by the units of the whole optimizer step (all micro-batches, all processes) so
                        # accumulation and data parallelism give the same gradient.
                        loss = trained * accelerator.num_processes / max(n_units, 1)
                        accelerator.backward(loss)
                    step_loss += float(trained.detach())
                    for name, value in terms.extra.items():
                        step_terms[name] = step_terms.get(name, 0.0) + float(value.detach())
                    for name, value in terms.figures.items():
                        key = f"figure:{name}"
                        step_terms[key] = step_terms.get(key, 0.0) + float(value)
                    if penalty is not None:
                        step_terms["peft_penalty"] = step_terms.get("peft_penalty", 0.0) + \
                            float(penalty.detach()) * objective.units(batch)
                    split = terms.per_example
                    if not (split is not None and meter.add_examples(step_groups, batch, split[0].detach(),
                                                                     split[1].detach())):
                        unsplit += 1
                    faults.point(f"micro-{loop.step + 1}-{i}")
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf))
                loop.consumed += len(micro) * accelerator.num_processes
                if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                    ids = [rid for b in micro for rid in b.get("record_ids", [])]
                    if loop.skipped >= cfg.skip_nonfinite_steps:
                        raise RunError(
                            f"non-finite {'loss' if not math.isfinite(step_loss) else 'gradient norm'} at step "
                            f"{loop.step + 1} (examples {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}); "
                            "lower trainer.learning_rate, check these examples, or allow a few skips with "
                            "trainer.skip_nonfinite_steps")
                    loop.skipped += 1  # the update is skipped; the data is consumed, the schedule moves on
                    ctx.progress.write(f"step {loop.step + 1}: non-finite loss or gradient, update skipped "
                                       f"({loop.skipped}/{cfg.skip_nonfinite_steps})")
                else:
                    for batch in micro:
                        meter.add_batch(batch, objective.units(batch))
                    meter.loss += step_loss
                    meter.add_terms(step_terms)
                    meter.add_groups(step_groups, unsplit)
                    optimizer.step()
                    ctx.adapter.on_optimizer_step(accelerator.unwrap_model(model), loop.step + 1, total)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loop.step += 1
                # A step's evaluation comes before its checkpoint, so a resume from this step neither redoes nor
                # misses it. Its event comes first (observers see step_end, then evaluate_end), except with early
                # stopping: then the event follows the evaluation and carries the decision, and every evaluated
                # step is logged. With keep_best the last step is evaluated too, to compete for the best.
                due = bool(cfg.eval_every and loop.step % cfg.eval_every == 0 and loop.step < total) or \
                    (stopping is not None and stopping.keep_best and loop.step == total) or \
                    any(c.should_evaluate(state) for c in self.callbacks)
                decision = evaluate() if due and stopping is not None else None
                extra: dict[str, Any] = {}
                for callback in self.callbacks:
                    extra.update(callback.on_step_end(state) or {})
                if loop.step % cfg.log_every == 0 or loop.step == total or decision is not None or extra:
                    last_event = meter.event(loop.step, round(loop.step / steps_per_epoch, 4),
                                             scheduler.get_last_lr()[0], grad_norm, started)
                    if decision is not None:
                        last_event["early_stopping"] = decision
                    last_event.update(extra)
                    state.last_event = last_event
                    ctx.log_step(last_event)
                else:
                    ctx.progress.step(loop.step)
                if due and stopping is None:
                    evaluate()
                if stopping is not None and stopping.stopped_at is not None:
                    ctx.progress.write(stopping.reason())
                    break
                stop_reason = next((r for c in self.callbacks if (r := c.should_stop(state))), None)
                if stop_reason is not None:
                    ctx.progress.write(stop_reason)
                    break
                if cfg.save_every and loop.step % cfg.save_every == 0 and loop.step < total:
                    checkpoint()
                faults.point(f"step-{loop.step}")
                if ctx.should_stop():
                    checkpoint()
                    raise Preempted(f"stopped by a signal at step {loop.step}; checkpoint saved, "
                                    "continue with: ift run RECIPE --output-dir RUN_DIR --resume")
            else:
                continue  # max steps reached inside the epoch
            if (stopping is not None and stopping.stopped_at is not None) or stop_reason is not None:
                break
            loop.epoch += 1
            loop.consumed = 0
        model.eval()
        seconds = time.perf_counter() - started
        final = accelerator.unwrap_model(model)
        summary = {"train_loss": last_event.get("loss"), "epochs": round(loop.step / steps_per_epoch, 4),
                   "train_seconds": round(seconds, 2), "batching": mode, "skipped_nonfinite_steps": loop.skipped,
                   **meter.totals(seconds)}
        if stop_reason is not None:
            summary["stopped"] = stop_reason
        if stopping is not None:
            restored = stopping.keep_best and stopping.best_step is not None and stopping.best_step != loop.step
            if restored:
                accelerator.wait_for_everyone()  # the main process wrote the best weights
                stopping.load_best(final)
                ctx.progress.write(f"final model: the best weights, from step {stopping.best_step} "
                                   f"({stopping.metric} {stopping.best_value})")
            summary["early_stopping"] = stopping.summary(final_step=loop.step, restored=restored)
        for callback in self.callbacks:
            callback.on_train_end(state, summary)
        return TrainResult(model=final, steps=loop.step, summary=summary)


def _early_stopping(ctx: TrainContext, cfg: TrainingConfig, main: bool) -> EarlyStopping | None:
    """The early-stopping tracker for ``trainer.early_stopping_metric``, or None."""
    if cfg.early_stopping_metric is None:
        return None
    if not cfg.eval_every:  # the recipe check catches this; a config built in code may not have been checked
        raise RecipeError([Problem("trainer.early_stopping_metric", "needs trainer.eval_every")])
    return EarlyStopping(metric=cfg.early_stopping_metric, higher_is_better=cfg.early_stopping_direction(),
                         patience=cfg.early_stopping_patience, min_delta=cfg.early_stopping_min_delta,
                         keep_best=cfg.keep_best, folder=ctx.checkpoint_dir or Path(ctx.run_dir) / "checkpoints",
                         main=main)


def _metric_value(result: dict[str, Any], metric: str) -> tuple[float | None] | None:
    """``(value,)`` when the evaluation computed ``metric`` (the value None when it was not finite), else None."""
    overall = (result or {}).get("overall") or {}
    if metric not in overall:
        return None
    value = overall[metric]
    return (float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None,)
