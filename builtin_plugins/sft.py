"""The ``sft`` trainer: supervised fine-tuning on trainable tokens, on one device or under torchrun /
accelerate launch (the engine is ``accelerate``), with per-source and per-task training loss, early stopping on an
eval metric and best-checkpoint selection (see :mod:`ift.builtin_plugins.early_stopping`)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

import ift
from ift import faults
from ift.batching import BatchPlan, pack_best_fit_decreasing
from ift.builtin_plugins.early_stopping import EarlyStopping, metric_direction
from ift.builtin_plugins.train_meter import TrainMeter
from ift.checkpoint import load_checkpoint, rotate, save_checkpoint
from ift.examples import PackedRows
from ift.examples import lengths as example_lengths
from ift.examples import sources as example_sources
from ift.examples import tasks as example_tasks
from ift.host import did_you_mean


class SFTConfig(ift.TrainerConfig):
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
    def _early_stopping_direction(self, info: ValidationInfo) -> SFTConfig:
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


def resolve_batching(requested: str, adapter: ift.ModelAdapter, device: Any) -> str:
    """``auto``: padding-free where the adapter packs and a GPU runs variable-length attention; on a CPU,
    length-grouped batches (a padding-free row makes one long attention matrix there, which costs more than
    the little padding that length grouping leaves)."""
    if requested != "auto":
        if requested in ("padding-free", "packing") and not adapter.supports_packing:
            raise ift.RecipeError([ift.Problem("trainer.batching", f"{requested!r} needs an adapter that "
                                               f"supports packed batches; {adapter.name!r} does not")])
        return requested
    if adapter.supports_packing and getattr(device, "type", "cpu") == "cuda":
        return "padding-free"
    return "length-grouped"


class SFTTrainer(ift.Trainer):
    """AdamW, warmup then cosine/linear decay, gradient accumulation with exact token-level loss
    normalisation, gradient clipping, periodic evaluation, four batching modes, per-source and per-task training
    loss, early stopping and best-checkpoint selection."""

    name = "sft"
    Config = SFTConfig
    config: SFTConfig
    _split: tuple[Any, Any, Any] | None = None  # what example_losses recorded for the current micro-batch

    def loss(self, ctx: ift.TrainContext, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Summed loss and trainable-token count of a micro-batch. Subclasses change the objective here.

        Per-source training loss comes from this same forward pass: the adapter's
        :meth:`~ift.ModelAdapter.loss_by_example` gives each example's summed loss, and
        :meth:`example_losses` records them and returns their sum. The loop reports per-source figures for a
        micro-batch only when the summed loss returned here *is* the tensor :meth:`example_losses` returned, so that
        the per-source figures always add up to the logged loss. The per-task figures (``loss_by_task``, present
        when at least one training example has a task) come from the same per-example sums and follow the same
        rules; examples without a task are left out of them. Hence, for an override:

        - returning ``super().loss(...)`` unchanged keeps per-source loss;
        - changing the objective (a penalty, label smoothing, a teacher term) drops per-source loss for the steps
          where the returned tensor differs (events then have no ``loss_by_source``), unless the override computes
          its own per-example sums from its own forward pass and returns ``self.example_losses(batch, sums,
          counts)``;
        - never run a second forward pass just for the breakdown.
        """
        split = ctx.adapter.loss_by_example(model, batch)
        if split is None:
            return ctx.adapter.loss_sum(model, batch)
        return self.example_losses(batch, *split)

    def checkpoint_state(self) -> dict[str, Any] | None:
        """What a subclass keeps across a resume besides the loop's position (running totals of its own
        figures, say): JSON values saved with every checkpoint of the main process and handed back to
        :meth:`restore_checkpoint_state` on resume. None (the default): nothing."""
        return None

    def restore_checkpoint_state(self, state: dict[str, Any] | None) -> None:
        """Take back what :meth:`checkpoint_state` saved (None when the checkpoint holds nothing for it). Called
        inside :meth:`train`, after the model, optimizer and scheduler are restored and before the first step."""

    def example_losses(self, batch: dict[str, Any], sums: Any, counts: Any) -> tuple[Any, Any]:
        """Record each example's summed loss and loss-token count (1-d tensors in ``batch["record_ids"]`` order)
        for the per-source training loss; returns ``(sums.sum(), counts.sum())`` to hand back from :meth:`loss`."""
        total = sums.sum()
        self._split: tuple[Any, Any, Any] | None = (total, sums.detach(), counts.detach())
        return total, counts.sum()

    def build_loader(self, ctx: ift.TrainContext, mode: str) -> Any:
        """A DataLoader whose ``batch_sampler`` is a :class:`BatchPlan`; examples become batches per ``mode``.
        It has a generator of its own so that starting an epoch never draws from the global RNG (which
        dropout uses, and which a resume restores). Each batch also carries ``sources``, the [[data]] table name
        of each example in ``record_ids`` order, and ``tasks``, each example's task or None (for the per-source and
        per-task training loss)."""
        import torch
        from torch.utils.data import DataLoader

        def loader(dataset: Any, plan: BatchPlan, collate: Any) -> Any:
            return DataLoader(dataset, batch_sampler=plan, collate_fn=collate,  # type: ignore[arg-type]
                              generator=torch.Generator().manual_seed(ctx.seed))

        def packed(rows: list[list[ift.EncodedExample]]) -> dict[str, Any]:
            return {**adapter.collate_packed(tokenizer, rows), "sources": [e.source for row in rows for e in row],
                    "tasks": [e.task for row in rows for e in row]}

        def padded(batch: list[ift.EncodedExample]) -> dict[str, Any]:
            return {**adapter.collate(tokenizer, batch), "sources": [e.source for e in batch],
                    "tasks": [e.task for e in batch]}

        cfg, adapter, tokenizer = self.config, ctx.adapter, ctx.tokenizer
        examples = ctx.train_examples
        lengths = example_lengths(examples)  # read from the table's offsets: no example is built here
        if mode == "packing":
            bins = PackedRows(examples, pack_best_fit_decreasing(lengths, cfg.max_length))
            plan = BatchPlan("padding", [1] * len(bins), cfg.batch_size, ctx.seed, cfg.shuffle)
            return loader(bins, plan, packed)
        plan = BatchPlan("length-grouped" if mode == "length-grouped" else "padding", lengths, cfg.batch_size,
                         ctx.seed, cfg.shuffle)
        if mode == "padding-free":
            return loader(examples, plan, lambda batch: packed([batch]))
        return loader(examples, plan, padded)

    def early_stopping(self, ctx: ift.TrainContext, main: bool) -> EarlyStopping | None:
        """The early-stopping tracker for ``trainer.early_stopping_metric``, or None."""
        cfg = self.config
        if cfg.early_stopping_metric is None:
            return None
        if not cfg.eval_every:  # the recipe check catches this; a config built in code may not have been checked
            raise ift.RecipeError([ift.Problem("trainer.early_stopping_metric", "needs trainer.eval_every")])
        return EarlyStopping(metric=cfg.early_stopping_metric, higher_is_better=cfg.early_stopping_direction(),
                             patience=cfg.early_stopping_patience, min_delta=cfg.early_stopping_min_delta,
                             keep_best=cfg.keep_best, folder=ctx.checkpoint_dir or Path(ctx.run_dir) / "checkpoints",
                             main=main)

    def train(self, ctx: ift.TrainContext) -> ift.TrainResult:
        import torch
        from accelerate import Accelerator
        from transformers import get_scheduler

        cfg = self.config
        model = ctx.model
        if cfg.gradient_checkpointing:
            ctx.adapter.enable_gradient_checkpointing(model)
        device = next(model.parameters()).device
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision,
                                  cpu=device.type == "cpu")
        mode = resolve_batching(cfg.batching, ctx.adapter, device)
        loader = self.build_loader(ctx, mode)
        plan = loader.batch_sampler
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}],
                                      lr=cfg.learning_rate, betas=cfg.adam_betas)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

        steps_per_epoch = max(1, math.ceil(len(loader) / cfg.gradient_accumulation_steps))
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total),
                                  num_training_steps=total)
        ctx.progress.total = total
        # every process lists the sources and tasks in the same order: the per-group totals are reduced
        # position-wise. Examples without a task count under no task (left out of the per-task figures).
        meter = TrainMeter(accelerator, device, model, cfg.max_length,
                           {"source": sorted(set(example_sources(ctx.train_examples))),
                            "task": sorted({t for t in example_tasks(ctx.train_examples) if t is not None})})
        loop = _Position()
        stopping = self.early_stopping(ctx, accelerator.is_main_process)
        trained_before = 0.0  # seconds trained before the checkpoint resumed from: the clock runs on from there
        if ctx.resume_from is not None:
            state = load_checkpoint(ctx.resume_from, model=accelerator.unwrap_model(model), optimizer=optimizer,
                                    scheduler=scheduler)
            loop = _Position(**state["position"]["loop"])
            trained_before = float(state["position"].get("seconds", 0.0))
            meter.restore(state["position"]["meter"])
            if stopping is not None:
                stopping.restore(state["position"].get("early_stopping"), ctx.resume_from)
            self.restore_checkpoint_state(state["position"].get("trainer"))
            ctx.progress.write(f"resumed from {ctx.resume_from.name}: step {loop.step}, epoch {loop.epoch}, "
                               f"{loop.consumed} batches into the epoch")

        def checkpoint() -> None:
            if ctx.checkpoint_dir is None or not accelerator.is_main_process:
                accelerator.wait_for_everyone()
                return
            position = {"loop": vars(loop), "meter": meter.state(), "seconds": time.perf_counter() - started}
            if stopping is not None:
                position["early_stopping"] = stopping.state()
            if (own := self.checkpoint_state()) is not None:
                position["trainer"] = own
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
        model.train()
        while loop.step < total and (stopping is None or stopping.stopped_at is None):
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
                n_trainable = sum(int(b["loss_tokens"]) for b in micro)
                n_trainable = int(accelerator.reduce(torch.tensor(n_trainable, device=accelerator.device),
                                                     reduction="sum"))
                step_loss = 0.0
                step_groups = meter.zeros()
                unsplit = 0
                for i, batch in enumerate(micro):
                    context = accelerator.no_sync(model) if i < len(micro) - 1 else nullcontext()
                    self._split = None
                    with context, accelerator.autocast():
                        loss_sum, _ = self.loss(ctx, model, batch)
                        # Divide by the tokens of the whole optimizer step (all micro-batches, all
                        # processes) so accumulation and data parallelism give the same gradient.
                        loss = loss_sum * accelerator.num_processes / max(n_trainable, 1)
                        accelerator.backward(loss)
                    step_loss += float(loss_sum.detach())
                    split, self._split = self._split, None
                    if not (split is not None and split[0] is loss_sum and meter.add_examples(step_groups, batch,
                                                                                             *split[1:])):
                        unsplit += 1
                    faults.point(f"micro-{loop.step + 1}-{i}")
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf))
                loop.consumed += len(micro) * accelerator.num_processes
                if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                    ids = [rid for b in micro for rid in b.get("record_ids", [])]
                    if loop.skipped >= cfg.skip_nonfinite_steps:
                        raise ift.RunError(
                            f"non-finite {'loss' if not math.isfinite(step_loss) else 'gradient norm'} at step "
                            f"{loop.step + 1} (examples {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}); "
                            "lower trainer.learning_rate, check these examples, or allow a few skips with "
                            "trainer.skip_nonfinite_steps")
                    loop.skipped += 1  # the update is skipped; the data is consumed, the schedule moves on
                    ctx.progress.write(f"step {loop.step + 1}: non-finite loss or gradient, update skipped "
                                       f"({loop.skipped}/{cfg.skip_nonfinite_steps})")
                else:
                    for batch in micro:
                        meter.add_batch(batch)
                    meter.loss += step_loss
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
                    (stopping is not None and stopping.keep_best and loop.step == total)
                decision = evaluate() if due and stopping is not None else None
                if loop.step % cfg.log_every == 0 or loop.step == total or decision is not None:
                    last_event = meter.event(loop.step, round(loop.step / steps_per_epoch, 4),
                                             scheduler.get_last_lr()[0], grad_norm, started)
                    if decision is not None:
                        last_event["early_stopping"] = decision
                    ctx.log_step(last_event)
                else:
                    ctx.progress.step(loop.step)
                if due and stopping is None:
                    evaluate()
                if stopping is not None and stopping.stopped_at is not None:
                    ctx.progress.write(stopping.reason())
                    break
                if cfg.save_every and loop.step % cfg.save_every == 0 and loop.step < total:
                    checkpoint()
                faults.point(f"step-{loop.step}")
                if ctx.should_stop():
                    checkpoint()
                    raise ift.Preempted(f"stopped by a signal at step {loop.step}; checkpoint saved, "
                                        "continue with: ift run RECIPE --output-dir RUN_DIR --resume")
            else:
                continue  # max steps reached inside the epoch
            if stopping is not None and stopping.stopped_at is not None:
                break
            loop.epoch += 1
            loop.consumed = 0
        model.eval()
        seconds = time.perf_counter() - started
        final = accelerator.unwrap_model(model)
        summary = {"train_loss": last_event.get("loss"), "epochs": round(loop.step / steps_per_epoch, 4),
                   "train_seconds": round(seconds, 2), "batching": mode, "skipped_nonfinite_steps": loop.skipped,
                   **meter.totals(seconds)}
        if stopping is not None:
            restored = stopping.keep_best and stopping.best_step is not None and stopping.best_step != loop.step
            if restored:
                accelerator.wait_for_everyone()  # the main process wrote the best weights
                stopping.load_best(final)
                ctx.progress.write(f"final model: the best weights, from step {stopping.best_step} "
                                   f"({stopping.metric} {stopping.best_value})")
            summary["early_stopping"] = stopping.summary(final_step=loop.step, restored=restored)
        return ift.TrainResult(model=final, steps=loop.step, summary=summary)


def _metric_value(result: dict[str, Any], metric: str) -> tuple[float | None] | None:
    """``(value,)`` when the evaluation computed ``metric`` (the value None when it was not finite), else None."""
    overall = (result or {}).get("overall") or {}
    if metric not in overall:
        return None
    value = overall[metric]
    return (float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None,)


@dataclass
class _Position:
    """Where training is: enough to continue exactly after a resume."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # batches (all processes) already taken from this epoch's plan
    skipped: int = 0


@ift.hookimpl
def ift_register_trainers() -> list[type]:
    return [SFTTrainer]
