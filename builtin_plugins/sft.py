"""The ``sft`` trainer: supervised fine-tuning on trainable tokens, on one device or under torchrun /
accelerate launch (the engine is ``accelerate``)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

import ift
from ift import faults
from ift.batching import BatchPlan, pack_best_fit_decreasing
from ift.checkpoint import load_checkpoint, rotate, save_checkpoint
from ift.throughput import flops_per_token, gpu_peak_flops, peak_memory_bytes


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
    normalisation, gradient clipping, periodic evaluation, four batching modes."""

    name = "sft"
    Config = SFTConfig
    config: SFTConfig

    def loss(self, ctx: ift.TrainContext, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Summed loss and trainable-token count of a micro-batch. Subclasses change the objective here."""
        return ctx.adapter.loss_sum(model, batch)

    def build_loader(self, ctx: ift.TrainContext, mode: str) -> Any:
        """A DataLoader whose ``batch_sampler`` is a :class:`BatchPlan`; examples become batches per ``mode``.
        It has a generator of its own so that starting an epoch never draws from the global RNG (which
        dropout uses, and which a resume restores)."""
        import torch
        from torch.utils.data import DataLoader

        def loader(dataset: Any, plan: BatchPlan, collate: Any) -> Any:
            return DataLoader(dataset, batch_sampler=plan, collate_fn=collate,  # type: ignore[arg-type]
                              generator=torch.Generator().manual_seed(ctx.seed))

        cfg, adapter, tokenizer = self.config, ctx.adapter, ctx.tokenizer
        examples = ctx.train_examples
        lengths = [len(e.input_ids) for e in examples]
        if mode == "packing":
            bins = [[examples[i] for i in b] for b in pack_best_fit_decreasing(lengths, cfg.max_length)]
            plan = BatchPlan("padding", [1] * len(bins), cfg.batch_size, ctx.seed, cfg.shuffle)
            return loader(bins, plan, lambda rows: adapter.collate_packed(tokenizer, rows))
        plan = BatchPlan("length-grouped" if mode == "length-grouped" else "padding", lengths, cfg.batch_size,
                         ctx.seed, cfg.shuffle)
        if mode == "padding-free":
            return loader(examples, plan, lambda batch: adapter.collate_packed(tokenizer, [batch]))
        return loader(examples, plan, lambda batch: adapter.collate(tokenizer, batch))

    def train(self, ctx: ift.TrainContext) -> ift.TrainResult:
        import torch
        from accelerate import Accelerator
        from transformers import get_scheduler

        cfg = self.config
        model = ctx.model
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
        meter = _Meter(accelerator, device, model, cfg.max_length)
        loop = _Position()
        if ctx.resume_from is not None:
            state = load_checkpoint(ctx.resume_from, model=accelerator.unwrap_model(model), optimizer=optimizer,
                                    scheduler=scheduler)
            loop = _Position(**state["position"]["loop"])
            meter.restore(state["position"]["meter"])
            ctx.progress.write(f"resumed from {ctx.resume_from.name}: step {loop.step}, epoch {loop.epoch}, "
                               f"{loop.consumed} batches into the epoch")

        def checkpoint() -> None:
            if ctx.checkpoint_dir is None or not accelerator.is_main_process:
                accelerator.wait_for_everyone()
                return
            save_checkpoint(ctx.checkpoint_dir, loop.step, model=accelerator.unwrap_model(model),
                            optimizer=optimizer, scheduler=scheduler,
                            position={"loop": vars(loop), "meter": meter.state()}, identity=ctx.identity,
                            before_commit=lambda _: faults.point(f"checkpoint-write-{loop.step}"))
            rotate(ctx.checkpoint_dir, cfg.keep_last)
            accelerator.wait_for_everyone()

        started = time.perf_counter()
        last_event: dict[str, Any] = {}
        model.train()
        while loop.step < total:
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
                for i, batch in enumerate(micro):
                    context = accelerator.no_sync(model) if i < len(micro) - 1 else nullcontext()
                    with context, accelerator.autocast():
                        loss_sum, _ = self.loss(ctx, model, batch)
                        # Divide by the tokens of the whole optimizer step (all micro-batches, all
                        # processes) so accumulation and data parallelism give the same gradient.
                        loss = loss_sum * accelerator.num_processes / max(n_trainable, 1)
                        accelerator.backward(loss)
                    step_loss += float(loss_sum.detach())
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
                    optimizer.step()
                    ctx.adapter.on_optimizer_step(accelerator.unwrap_model(model), loop.step + 1, total)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loop.step += 1
                if loop.step % cfg.log_every == 0 or loop.step == total:
                    last_event = meter.event(loop.step, round(loop.step / steps_per_epoch, 4),
                                             scheduler.get_last_lr()[0], grad_norm, started)
                    ctx.log_step(last_event)
                else:
                    ctx.progress.step(loop.step)
                if cfg.save_every and loop.step % cfg.save_every == 0 and loop.step < total:
                    checkpoint()
                faults.point(f"step-{loop.step}")
                if ctx.should_stop():
                    checkpoint()
                    raise ift.Preempted(f"stopped by a signal at step {loop.step}; checkpoint saved, "
                                        "continue with: ift run RECIPE --output-dir RUN_DIR --resume")
                if cfg.eval_every and loop.step % cfg.eval_every == 0 and loop.step < total:
                    ctx.evaluate(accelerator.unwrap_model(model), f"step-{loop.step}")
                    model.train()
            else:
                continue  # max steps reached inside the epoch
            loop.epoch += 1
            loop.consumed = 0
        model.eval()
        seconds = time.perf_counter() - started
        summary = {"train_loss": last_event.get("loss"), "epochs": round(loop.step / steps_per_epoch, 4),
                   "train_seconds": round(seconds, 2), "batching": mode, "skipped_nonfinite_steps": loop.skipped,
                   **meter.totals(seconds)}
        return ift.TrainResult(model=accelerator.unwrap_model(model), steps=loop.step, summary=summary)


@dataclass
class _Position:
    """Where training is: enough to continue exactly after a resume."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # batches (all processes) already taken from this epoch's plan
    skipped: int = 0


class _Meter:
    """Counts what actually went through the model, from the batch tensors."""

    def __init__(self, accelerator: Any, device: Any, model: Any, max_length: int) -> None:
        self.accelerator, self.device = accelerator, device
        self.peak_flops = gpu_peak_flops(device)
        self.adapters = any(not p.requires_grad for p in model.parameters())
        self.model = model
        self.all = {"real": 0, "supervised": 0, "slots": 0, "wait": 0.0}
        self._reset()

    def _reset(self) -> None:
        self.loss, self.real, self.supervised, self.slots, self.wait, self.examples = 0.0, 0, 0, 0, 0.0, 0
        self.start = time.perf_counter()

    def state(self) -> dict[str, Any]:
        return {"window": [self.loss, self.real, self.supervised, self.slots, self.examples], "all": self.all}

    def restore(self, state: dict[str, Any]) -> None:
        self.loss, self.real, self.supervised, self.slots, self.examples = state["window"]
        self.all = state["all"]

    def add_batch(self, batch: dict[str, Any]) -> None:
        self.real += int(batch["real_tokens"])
        self.examples += int(batch["num_examples"])
        self.supervised += int(batch["loss_tokens"])
        self.slots += batch["input_ids"].numel()

    def event(self, step: int, epoch: float, lr: float, grad_norm: float | None, started: float) -> dict[str, Any]:
        import torch

        totals = torch.tensor([self.loss, self.supervised, self.real, self.slots, self.examples],
                              dtype=torch.float64, device=self.accelerator.device)
        loss_sum, supervised, real, slots, examples = self.accelerator.reduce(totals, reduction="sum").tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        peak, kind = peak_memory_bytes(self.device)
        event = {"step": step, "epoch": epoch, "loss": loss_sum / max(supervised, 1), "learning_rate": lr,
                 "tokens": int(real), "trainable_tokens": int(supervised),
                 "tokens_per_s": round(real / elapsed, 1), "supervised_tokens_per_s": round(supervised / elapsed, 1),
                 "padding_fraction": round(1 - real / max(slots, 1), 4),
                 "data_wait_fraction": round(min(self.wait / elapsed, 1.0), 4), "grad_norm": grad_norm,
                 "peak_memory_mb": round(peak / 2**20, 1), "memory": kind,
                 "elapsed_s": round(time.perf_counter() - started, 2)}
        if self.peak_flops:
            mean_length = real / max(examples, 1)  # each token attends within its own example
            flops = flops_per_token(self.model, self.adapters, mean_length) * real
            event["mfu"] = round(flops / elapsed / (self.peak_flops * self.accelerator.num_processes), 4)
        for key, value in (("real", real), ("supervised", supervised), ("slots", slots), ("wait", self.wait)):
            self.all[key] += value
        self._reset()
        return event

    def totals(self, seconds: float) -> dict[str, Any]:
        peak, kind = peak_memory_bytes(self.device)
        return {"tokens": int(self.all["real"]), "trainable_tokens": int(self.all["supervised"]),
                "tokens_per_s": round(self.all["real"] / max(seconds, 1e-9), 1),
                "padding_fraction": round(1 - self.all["real"] / max(self.all["slots"], 1), 4),
                "data_wait_fraction": round(self.all["wait"] / max(seconds, 1e-9), 4),
                "peak_memory_mb": round(peak / 2**20, 1), "memory": kind}


@ift.hookimpl
def ift_register_trainers() -> list[type]:
    return [SFTTrainer]
