"""``ift.train``: the training loop every builtin trainer runs, public for trainers of your own.

The loop owns epochs, batches (:mod:`ift.batching`), exact token-normalised gradient accumulation across
micro-batches and processes (the engine is ``accelerate``), clipping, non-finite handling, the PEFT method's own
training penalty, the evaluation schedule, early stopping, checkpoints and bitwise-exact resume, preemption and the
logged figures. What it minimises comes from an :class:`ift.Objective`; what happens around each step can be
observed or steered with :class:`Callback` objects; the optimizer and the learning-rate schedule are built by
factories (:data:`OptimizerFactory`, :data:`SchedulerFactory`) that a trainer may replace. Those, the
configuration and the choices made before the first step live in :mod:`ift.loop_setup` and are public here.

torch, accelerate and transformers are imported inside functions: ``import ift`` stays light.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from ift import faults
from ift.callbacks import Callback, LoopState, Position
from ift.errors import Preempted, RunError
from ift.loop_setup import (
    OptimizerFactory,
    SchedulerFactory,
    TrainingConfig,
    adamw,
    checkpointing,
    early_stopping_callback,
    forward_tokens,
    resolve_batching,
    sequence_loader,
    warmup_then_decay,
)

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
    from ift.components import EncodedExample
    from ift.objectives import Objective
    from ift.training import TrainContext, TrainResult


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
            from ift.allocator import threshold_for, tune_for_training

            sizes = [(p.numel(), p.requires_grad) for p in model.parameters()]
            trained = sum(n for n, grad in sizes if grad) / max(1, sum(n for n, _ in sizes))
            tune_for_training(threshold_for(checkpointed, trained, asked=cfg.gradient_checkpointing is True))
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
