"""The ``sft`` trainer: supervised fine-tuning on trainable tokens, on one device or under torchrun /
accelerate launch (the engine is ``accelerate``)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any, Literal

from pydantic import Field

import ift


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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, fp32 otherwise.")


class EpochShuffle:
    """Indices in a seeded order that changes every epoch (same order on every process)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


class SFTTrainer(ift.Trainer):
    """AdamW, warmup then cosine/linear decay, gradient accumulation with exact token-level loss
    normalisation, gradient clipping, periodic evaluation."""

    name = "sft"
    Config = SFTConfig
    config: SFTConfig

    def loss(self, ctx: ift.TrainContext, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """Summed loss and trainable-token count of a micro-batch. Subclasses change the objective here."""
        return ctx.adapter.loss_sum(model, batch)

    def train(self, ctx: ift.TrainContext) -> ift.TrainResult:
        import torch
        from accelerate import Accelerator
        from torch.utils.data import DataLoader
        from transformers import get_scheduler

        cfg = self.config
        model = ctx.model
        device = next(model.parameters()).device
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        accelerator = Accelerator(mixed_precision="no" if precision == "fp32" else precision,
                                  cpu=device.type == "cpu")

        examples = ctx.train_examples
        sampler = EpochShuffle(len(examples), ctx.seed)
        loader = DataLoader(examples, batch_size=cfg.batch_size, sampler=sampler,
                            collate_fn=lambda batch: ctx.adapter.collate(ctx.tokenizer, batch))
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

        step, epoch = 0, 0
        window = {"loss": 0.0, "trainable": 0, "tokens": 0, "start": time.perf_counter()}
        started = time.perf_counter()
        last_event: dict[str, Any] = {}
        model.train()
        while step < total:
            sampler.set_epoch(epoch)
            batches = iter(loader)
            while step < total:
                micro = [b for _, b in zip(range(cfg.gradient_accumulation_steps), batches, strict=False)]
                if not micro:
                    break
                n_trainable = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
                n_trainable = int(accelerator.reduce(torch.tensor(n_trainable, device=accelerator.device),
                                                     reduction="sum"))
                for i, batch in enumerate(micro):
                    sync = i == len(micro) - 1
                    context = accelerator.no_sync(model) if not sync else nullcontext()
                    with context, accelerator.autocast():
                        loss_sum, _ = self.loss(ctx, model, batch)
                        # Divide by the tokens of the whole optimizer step (all micro-batches, all
                        # processes) so accumulation and data parallelism give the same gradient.
                        loss = loss_sum * accelerator.num_processes / max(n_trainable, 1)
                        accelerator.backward(loss)
                    window["loss"] += float(loss_sum.detach())
                    window["tokens"] += int(batch["attention_mask"].sum())
                if not math.isfinite(window["loss"]):
                    raise ift.RunError(f"training loss became {window['loss']} at step {step + 1}; "
                                       "lower trainer.learning_rate or check the data")
                window["trainable"] += n_trainable // accelerator.num_processes
                grad_norm = None
                if cfg.max_grad_norm:
                    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % cfg.log_every == 0 or step == total:
                    last_event = self._event(accelerator, window, step, epoch, steps_per_epoch,
                                             scheduler.get_last_lr()[0], grad_norm, started)
                    ctx.log_step(last_event)
                    window = {"loss": 0.0, "trainable": 0, "tokens": 0, "start": time.perf_counter()}
                else:
                    ctx.progress.step(step)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                    ctx.evaluate(accelerator.unwrap_model(model), f"step-{step}")
                    model.train()
            epoch += 1
        model.eval()
        return ift.TrainResult(model=accelerator.unwrap_model(model), steps=step,
                               summary={"train_loss": last_event.get("loss"), "epochs": step / steps_per_epoch,
                                        "train_seconds": round(time.perf_counter() - started, 2)})

    @staticmethod
    def _event(accelerator: Any, window: dict[str, Any], step: int, epoch: int, steps_per_epoch: int,
               lr: float, grad_norm: float | None, started: float) -> dict[str, Any]:
        import torch

        totals = torch.tensor([window["loss"], window["trainable"], window["tokens"]], dtype=torch.float64,
                              device=accelerator.device)
        loss_sum, trainable, tokens = accelerator.reduce(totals, reduction="sum").tolist()
        elapsed = max(time.perf_counter() - window["start"], 1e-9)
        return {"step": step, "epoch": round(step / steps_per_epoch, 4),
                "loss": loss_sum / max(trainable, 1), "learning_rate": lr,
                "tokens": int(tokens), "trainable_tokens": int(trainable),
                "tokens_per_s": round(tokens / elapsed, 1), "grad_norm": grad_norm,
                "elapsed_s": round(time.perf_counter() - started, 2)}


@ift.hookimpl
def ift_register_trainers() -> list[type]:
    return [SFTTrainer]
