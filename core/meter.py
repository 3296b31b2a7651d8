"""What the ``sft`` trainer logs: token counts, throughput, padding, data wait, and the training loss overall,
per source and per task, windowed between logged steps and totalled over the run."""

from __future__ import annotations

import time
from typing import Any

from ift.throughput import flops_per_token, gpu_peak_flops, peak_memory_bytes


class TrainMeter:
    """Counts what actually went through the model, from the batch tensors, and the training loss per group of
    examples: per source ([[data]] table) and per task (the record's ``task``).

    Groups are given as ``{"source": names, "task": names}``, each list in the same order on every process; a
    group with no names is left out (no ``loss_by_task`` when no training example has a task). An example whose
    value is None (no task) counts in the overall figures but under no name of that group, so the per-task tokens
    add up to ``trainable_tokens`` only when every example has a task. All groups share one ``2 x columns``
    float64 tensor on the device (summed loss, loss tokens; the columns of each group one after the other) that
    travels in the same reduction as the other totals of a logged step, so data parallelism costs one collective
    per event however many groups there are."""

    def __init__(
        self, accelerator: Any, device: Any, model: Any, max_length: int, groups: dict[str, list[str]]
    ) -> None:
        self.accelerator, self.device = accelerator, device
        self.peak_flops = gpu_peak_flops(device)
        self.adapters = any(not p.requires_grad for p in model.parameters())
        self.model = model
        # group key -> name -> column of the shared tensor
        self.columns: dict[str, dict[str, int]] = {}
        self.width = 0  # columns of the per-group tensor
        for key, names in groups.items():
            if names:
                self.columns[key] = {name: self.width + i for i, name in enumerate(names)}
                self.width += len(names)
        # over the whole run: by_group is [summed loss, loss tokens] per column; split is false once a trained
        # micro-batch came without a per-example breakdown (per-group figures are then left out)
        self.all: dict[str, Any] = {
            "real": 0,
            "supervised": 0,
            "slots": 0,
            "wait": 0.0,
            "loss": 0.0,
            "units": 0,
            "by_group": [[0.0, 0.0] for _ in range(self.width)],
            "split": True,
        }
        self._reset()

    def _reset(self) -> None:
        self.loss, self.real, self.supervised, self.slots, self.wait, self.examples = 0.0, 0, 0, 0, 0.0, 0
        self.units = 0
        self.terms: dict[str, float] = {}
        self.by_group, self.unsplit = self.zeros(), 0
        self.start = time.perf_counter()

    def zeros(self) -> Any:
        import torch

        return torch.zeros((2, self.width), dtype=torch.float64, device=self.accelerator.device)

    def state(self) -> dict[str, Any]:
        return {
            "window": [self.loss, self.real, self.supervised, self.slots, self.examples],
            "all": self.all,
            "by_group": self.by_group.tolist(),
            "unsplit": self.unsplit,
            "units": self.units,
            "terms": self.terms,
        }

    def restore(self, state: dict[str, Any]) -> None:
        import torch

        self.loss, self.real, self.supervised, self.slots, self.examples = state["window"]
        self.units = state.get("units", self.supervised)  # before objectives: the loss was a sum over tokens
        self.terms = dict(state.get("terms", {}))
        saved = dict(state["all"])
        saved.setdefault("units", saved.get("supervised", 0))
        old = saved.pop("by_source", None)
        window = state.get("by_group")
        if window is None and "by_source" in state and list(self.columns) == ["source"]:
            # a checkpoint from before per-task loss: its per-source columns are all the columns there are
            window, saved["by_group"] = state["by_source"], old
        self.all = {**self.all, **saved}
        if window is not None:
            self.by_group = torch.tensor(window, dtype=torch.float64, device=self.accelerator.device).reshape(
                2, self.width
            )
            self.unsplit = state["unsplit"]
        else:  # a checkpoint from before per-source (or, with tasks, per-task) loss was kept
            self.all["split"], self.unsplit = False, 1
            self.all["by_group"] = [[0.0, 0.0] for _ in range(self.width)]

    def add_batch(self, batch: dict[str, Any], units: int | None = None) -> None:
        """Count a trained micro-batch; ``units``: what its loss is a sum over (its trained tokens by default)."""
        self.units += int(batch["loss_tokens"]) if units is None else units
        self.real += int(batch["real_tokens"])
        self.examples += int(batch["num_examples"])
        self.supervised += int(batch["loss_tokens"])
        self.slots += batch["input_ids"].numel()

    def add_examples(self, into: Any, batch: dict[str, Any], sums: Any, counts: Any) -> bool:
        """Add a micro-batch's per-example losses to ``into``, by every group at once (the batch lists each
        example's value of group ``key`` under ``key + "s"``: ``sources``, ``tasks``); False when the batch cannot
        be split."""
        import torch

        if not self.columns:
            return False
        positions: list[int] = []
        columns: list[int] = []
        for key, column_of in self.columns.items():
            names = batch.get(f"{key}s")
            if names is None or len(names) != sums.numel():
                return False
            for i, name in enumerate(names):
                if name is not None:
                    positions.append(i)
                    columns.append(column_of[name])
        where = torch.tensor(positions, dtype=torch.long, device=sums.device)
        index = torch.tensor(columns, dtype=torch.long, device=into.device)
        into[0].index_add_(0, index, sums.index_select(0, where).to(into.device, torch.float64))
        into[1].index_add_(0, index, counts.index_select(0, where).to(into.device, torch.float64))
        return True

    def add_terms(self, sums: dict[str, float]) -> None:
        """Add a trained step's summed extra loss terms and figures (``figure:`` names), logged per unit."""
        for name, value in sums.items():
            self.terms[name] = self.terms.get(name, 0.0) + value

    def add_groups(self, step_groups: Any, unsplit: int) -> None:
        """Count a trained (not skipped) optimizer step's per-group sums."""
        self.by_group += step_groups
        self.unsplit += unsplit

    def figures(self, sums: list[float], counts: list[float]) -> dict[str, Any]:
        """``loss_by_<key>`` and ``trainable_tokens_by_<key>`` of each group from per-column sums; a name with no
        loss tokens is left out."""
        out: dict[str, Any] = {}
        for key, column_of in self.columns.items():
            out[f"loss_by_{key}"] = {name: sums[c] / counts[c] for name, c in column_of.items() if counts[c] > 0}
            out[f"trainable_tokens_by_{key}"] = {name: int(counts[c]) for name, c in column_of.items() if counts[c] > 0}
        return out

    def event(self, step: int, epoch: float, lr: float, grad_norm: float | None, started: float) -> dict[str, Any]:
        import torch

        names = sorted(self.terms)  # every process runs the same objective: the same terms, in this order
        totals = torch.tensor(
            [
                self.loss,
                self.supervised,
                self.real,
                self.slots,
                self.examples,
                self.unsplit,
                self.units,
                *(self.terms[n] for n in names),
            ],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        reduced = self.accelerator.reduce(torch.cat([totals, self.by_group.flatten()]), reduction="sum").tolist()
        loss_sum, supervised, real, slots, examples, unsplit, units = reduced[:7]
        terms = dict(zip(names, reduced[7 : 7 + len(names)], strict=True))
        reduced = reduced[7 + len(names) :]
        by_group = [reduced[: self.width], reduced[self.width :]]
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        peak, kind = peak_memory_bytes(self.device)
        event = {
            "step": step,
            "epoch": epoch,
            "loss": loss_sum / max(units, 1),
            "learning_rate": lr,
            "tokens": int(real),
            "trainable_tokens": int(supervised),
            "tokens_per_s": round(real / elapsed, 1),
            "supervised_tokens_per_s": round(supervised / elapsed, 1),
            "padding_fraction": round(1 - real / max(slots, 1), 4),
            "data_wait_fraction": round(min(self.wait / elapsed, 1.0), 4),
            "grad_norm": grad_norm,
            "peak_memory_mb": round(peak / 2**20, 1),
            "memory": kind,
            "elapsed_s": round(time.perf_counter() - started, 2),
        }
        if unsplit == 0:
            event.update(self.figures(*by_group))
        trained = {n: v / max(units, 1) for n, v in terms.items() if not n.startswith("figure:")}
        if trained:
            event["loss_terms"] = trained
        event.update(
            {n.removeprefix("figure:"): v / max(units, 1) for n, v in terms.items() if n.startswith("figure:")}
        )
        if self.peak_flops:
            mean_length = real / max(examples, 1)  # each token attends within its own example
            flops = flops_per_token(self.model, self.adapters, mean_length) * real
            event["mfu"] = round(flops / elapsed / (self.peak_flops * self.accelerator.num_processes), 4)
        for key, value in (
            ("real", real),
            ("supervised", supervised),
            ("slots", slots),
            ("wait", self.wait),
            ("loss", loss_sum),
            ("units", units),
        ):
            self.all[key] += value
        for column, whole in enumerate(self.all["by_group"]):
            whole[0] += by_group[0][column]
            whole[1] += by_group[1][column]
        self.all["split"] = self.all["split"] and unsplit == 0
        self._reset()
        return event

    def totals(self, seconds: float) -> dict[str, Any]:
        peak, kind = peak_memory_bytes(self.device)
        out = {
            "tokens": int(self.all["real"]),
            "trainable_tokens": int(self.all["supervised"]),
            "mean_loss": self.all["loss"] / max(self.all["units"], 1),
            "tokens_per_s": round(self.all["real"] / max(seconds, 1e-9), 1),
            "padding_fraction": round(1 - self.all["real"] / max(self.all["slots"], 1), 4),
            "data_wait_fraction": round(self.all["wait"] / max(seconds, 1e-9), 4),
            "peak_memory_mb": round(peak / 2**20, 1),
            "memory": kind,
        }
        if self.all["split"]:
            # token-weighted mean over every logged step of the run, like mean_loss
            out.update(self.figures([s for s, _ in self.all["by_group"]], [n for _, n in self.all["by_group"]]))
        return out
