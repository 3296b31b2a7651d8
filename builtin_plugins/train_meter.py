"""What the ``sft`` trainer logs: token counts, throughput, padding, data wait, and the training loss overall and
per source, windowed between logged steps and totalled over the run."""

from __future__ import annotations

import time
from typing import Any

from ift.throughput import flops_per_token, gpu_peak_flops, peak_memory_bytes


class TrainMeter:
    """Counts what actually went through the model, from the batch tensors, and the training loss per source.

    Per-source sums stay on the device (a ``2 x sources`` float64 tensor: summed loss, loss tokens) and travel in
    the same reduction as the other totals of a logged step, so data parallelism costs one collective per event."""

    def __init__(self, accelerator: Any, device: Any, model: Any, max_length: int, sources: list[str]) -> None:
        self.accelerator, self.device = accelerator, device
        self.peak_flops = gpu_peak_flops(device)
        self.adapters = any(not p.requires_grad for p in model.parameters())
        self.model = model
        self.sources = sources
        self.source_index = {name: i for i, name in enumerate(sources)}
        # over the whole run: by_source is [summed loss, loss tokens] per source; split is false once a trained
        # micro-batch came without a per-example breakdown (per-source figures are then left out)
        self.all: dict[str, Any] = {"real": 0, "supervised": 0, "slots": 0, "wait": 0.0, "loss": 0.0,
                                    "by_source": [[0.0, 0.0] for _ in sources], "split": True}
        self._reset()

    def _reset(self) -> None:
        self.loss, self.real, self.supervised, self.slots, self.wait, self.examples = 0.0, 0, 0, 0, 0.0, 0
        self.by_source, self.unsplit = self.zeros(), 0
        self.start = time.perf_counter()

    def zeros(self) -> Any:
        import torch

        return torch.zeros((2, len(self.sources)), dtype=torch.float64, device=self.accelerator.device)

    def state(self) -> dict[str, Any]:
        return {"window": [self.loss, self.real, self.supervised, self.slots, self.examples], "all": self.all,
                "by_source": self.by_source.tolist(), "unsplit": self.unsplit}

    def restore(self, state: dict[str, Any]) -> None:
        import torch

        self.loss, self.real, self.supervised, self.slots, self.examples = state["window"]
        self.all = {**self.all, **state["all"]}
        if "by_source" in state:
            self.by_source = torch.tensor(state["by_source"], dtype=torch.float64,
                                          device=self.accelerator.device).reshape(2, len(self.sources))
            self.unsplit = state["unsplit"]
        else:  # a checkpoint from before per-source loss was kept
            self.all["split"], self.unsplit = False, 1

    def add_batch(self, batch: dict[str, Any]) -> None:
        self.real += int(batch["real_tokens"])
        self.examples += int(batch["num_examples"])
        self.supervised += int(batch["loss_tokens"])
        self.slots += batch["input_ids"].numel()

    def add_examples(self, into: Any, batch: dict[str, Any], sums: Any, counts: Any) -> bool:
        """Add a micro-batch's per-example losses to ``into`` by source; False when the batch cannot be split."""
        import torch

        names = batch.get("sources")
        if names is None or len(names) != sums.numel() or not self.sources:
            return False
        index = torch.tensor([self.source_index[n] for n in names], device=into.device)
        into[0].index_add_(0, index, sums.to(into.device, torch.float64))
        into[1].index_add_(0, index, counts.to(into.device, torch.float64))
        return True

    def add_sources(self, step_sources: Any, unsplit: int) -> None:
        """Count a trained (not skipped) optimizer step's per-source sums."""
        self.by_source += step_sources
        self.unsplit += unsplit

    def event(self, step: int, epoch: float, lr: float, grad_norm: float | None, started: float) -> dict[str, Any]:
        import torch

        totals = torch.tensor([self.loss, self.supervised, self.real, self.slots, self.examples, self.unsplit],
                              dtype=torch.float64, device=self.accelerator.device)
        reduced = self.accelerator.reduce(torch.cat([totals, self.by_source.flatten()]), reduction="sum").tolist()
        loss_sum, supervised, real, slots, examples, unsplit = reduced[:6]
        by_source = [reduced[6:6 + len(self.sources)], reduced[6 + len(self.sources):]]
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        peak, kind = peak_memory_bytes(self.device)
        event = {"step": step, "epoch": epoch, "loss": loss_sum / max(supervised, 1), "learning_rate": lr,
                 "tokens": int(real), "trainable_tokens": int(supervised),
                 "tokens_per_s": round(real / elapsed, 1), "supervised_tokens_per_s": round(supervised / elapsed, 1),
                 "padding_fraction": round(1 - real / max(slots, 1), 4),
                 "data_wait_fraction": round(min(self.wait / elapsed, 1.0), 4), "grad_norm": grad_norm,
                 "peak_memory_mb": round(peak / 2**20, 1), "memory": kind,
                 "elapsed_s": round(time.perf_counter() - started, 2)}
        if unsplit == 0 and self.sources:
            event["loss_by_source"] = {name: by_source[0][i] / by_source[1][i]
                                       for i, name in enumerate(self.sources) if by_source[1][i] > 0}
            event["trainable_tokens_by_source"] = {name: int(by_source[1][i])
                                                   for i, name in enumerate(self.sources) if by_source[1][i] > 0}
        if self.peak_flops:
            mean_length = real / max(examples, 1)  # each token attends within its own example
            flops = flops_per_token(self.model, self.adapters, mean_length) * real
            event["mfu"] = round(flops / elapsed / (self.peak_flops * self.accelerator.num_processes), 4)
        for key, value in (("real", real), ("supervised", supervised), ("slots", slots), ("wait", self.wait),
                           ("loss", loss_sum)):
            self.all[key] += value
        for i in range(len(self.sources)):
            self.all["by_source"][i][0] += by_source[0][i]
            self.all["by_source"][i][1] += by_source[1][i]
        self.all["split"] = self.all["split"] and unsplit == 0
        self._reset()
        return event

    def totals(self, seconds: float) -> dict[str, Any]:
        peak, kind = peak_memory_bytes(self.device)
        out = {"tokens": int(self.all["real"]), "trainable_tokens": int(self.all["supervised"]),
               "mean_loss": self.all["loss"] / max(self.all["supervised"], 1),
               "tokens_per_s": round(self.all["real"] / max(seconds, 1e-9), 1),
               "padding_fraction": round(1 - self.all["real"] / max(self.all["slots"], 1), 4),
               "data_wait_fraction": round(self.all["wait"] / max(seconds, 1e-9), 4),
               "peak_memory_mb": round(peak / 2**20, 1), "memory": kind}
        if self.all["split"] and self.sources:
            # token-weighted mean over every logged step of the run, like mean_loss
            out["loss_by_source"] = {name: s / n for name, (s, n) in zip(self.sources, self.all["by_source"],
                                                                         strict=True) if n > 0}
            out["trainable_tokens_by_source"] = {name: int(n) for name, (_, n) in zip(self.sources,
                                                                                      self.all["by_source"],
                                                                                      strict=True) if n > 0}
        return out
