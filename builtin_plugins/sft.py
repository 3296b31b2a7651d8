"""The ``sft`` trainer: supervised fine-tuning on trainable tokens, on one device or under torchrun /
accelerate launch (the engine is ``accelerate``)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any, Literal

from pydantic import Field

import ift
from ift.batching import BatchPlan, pack_best_fit_decreasing
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
        """A DataLoader whose ``batch_sampler`` has ``set_epoch``; examples become batches per ``mode``."""
        from torch.utils.data import DataLoader

        cfg, adapter, tokenizer = self.config, ctx.adapter, ctx.tokenizer
        examples = ctx.train_examples
        lengths = [len(e.input_ids) for e in examples]
        if mode == "packing":
            bins = [[examples[i] for i in b] for b in pack_best_fit_decreasing(lengths, cfg.max_length)]
            plan = BatchPlan("padding", [1] * len(bins), cfg.batch_size, ctx.seed, cfg.shuffle)
            return DataLoader(bins, batch_sampler=plan,  # type: ignore[arg-type]
                              collate_fn=lambda rows: adapter.collate_packed(tokenizer, rows))
        plan = BatchPlan("length-grouped" if mode == "length-grouped" else "padding", lengths, cfg.batch_size,
                         ctx.seed, cfg.shuffle)
        if mode == "padding-free":
            return DataLoader(examples, batch_sampler=plan,  # type: ignore[arg-type]
                              collate_fn=lambda batch: adapter.collate_packed(tokenizer, [batch]))
        return DataLoader(examples, batch_sampler=plan,  # type: ignore[arg-type]
                          collate_fn=lambda batch: adapter.collate(tokenizer, batch))

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

        step, epoch = 0, 0
        started = time.perf_counter()
        last_event: dict[str, Any] = {}
        model.train()
        while step < total:
            plan.set_epoch(epoch)
            batches = iter(loader)
            while step < total:
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
                n_trainable = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
                n_trainable = int(accelerator.reduce(torch.tensor(n_trainable, device=accelerator.device),
                                                     reduction="sum"))
                for i, batch in enumerate(micro):
                    context = accelerator.no_sync(model) if i < len(micro) - 1 else nullcontext()
                    with context, accelerator.autocast():
                        loss_sum, _ = self.loss(ctx, model, batch)
                        # Divide by the tokens of the whole optimizer step (all micro-batches, all
                        # processes) so accumulation and data parallelism give the same gradient.
                        loss = loss_sum * accelerator.num_processes / max(n_trainable, 1)
                        accelerator.backward(loss)
                    meter.add_batch(float(loss_sum.detach()), batch)
                if not math.isfinite(meter.loss):
                    raise ift.RunError(f"training loss became {meter.loss} at step {step + 1}; "
                                       "lower trainer.learning_rate or check the data")
                grad_norm = None
                if cfg.max_grad_norm:
                    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % cfg.log_every == 0 or step == total:
                    last_event = meter.event(step, round(step / steps_per_epoch, 4), scheduler.get_last_lr()[0],
                                             grad_norm, started)
                    ctx.log_step(last_event)
                else:
                    ctx.progress.step(step)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    ctx.evaluate(accelerator.unwrap_model(model), f"step-{step}")
                    model.train()
            epoch += 1
        model.eval()
        seconds = time.perf_counter() - started
        summary = {"train_loss": last_event.get("loss"), "epochs": round(step / steps_per_epoch, 4),
                   "train_seconds": round(seconds, 2), "batching": mode, **meter.totals(seconds)}
        return ift.TrainResult(model=accelerator.unwrap_model(model), steps=step, summary=summary)


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

    def add_batch(self, loss_sum: float, batch: dict[str, Any]) -> None:
        self.loss += loss_sum
        self.real += int(batch["real_tokens"])
        self.examples += int(batch["num_examples"])
        self.supervised += int((batch["labels"][:, 1:] != -100).sum())
        self.slots += batch["input_ids"].numel()

    def event(self, step: int, epoch: float, lr: float, grad_norm: float | None, started: float) -> dict[str, Any]:
        import torch

        totals = torch.tensor([self.loss, self.supervised, self.real, self.slots], dtype=torch.float64,
                              device=self.accelerator.device)
        loss_sum, supervised, real, slots = self.accelerator.reduce(totals, reduction="sum").tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        peak, kind = peak_memory_bytes(self.device)
        event = {"step": step, "epoch": epoch, "loss": loss_sum / max(supervised, 1), "learning_rate": lr,
                 "tokens": int(real), "trainable_tokens": int(supervised),
                 "tokens_per_s": round(real / elapsed, 1), "supervised_tokens_per_s": round(supervised / elapsed, 1),
                 "padding_fraction": round(1 - real / max(slots, 1), 4),
                 "data_wait_fraction": round(min(self.wait / elapsed, 1.0), 4), "grad_norm": grad_norm,
                 "peak_memory_mb": round(peak / 2**20, 1), "memory": kind,
                 "elapsed_s": round(time.perf_counter() - started, 2)}
        examples = float(self.accelerator.reduce(torch.tensor(float(self.examples), device=self.accelerator.device),
                                                 reduction="sum"))
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
