"""Evaluation on the held-out split: loss-based and generation-based metrics, overall and per source."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ift.components import EncodedExample, EvalOutputs, Metric, ModelAdapter, Renderer
from ift.records import InstructionRecord
from ift.runtime import is_main_process

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = ["Evaluator"]


class Evaluator:
    """Callable as ``evaluator(model, stage)``; returns ``{"overall": {...}, "per_source": {...}}``."""

    def __init__(
        self,
        *,
        adapter: ModelAdapter,
        tokenizer: Any,
        renderer: Renderer,
        metrics: list[Metric],
        records: list[InstructionRecord],
        examples: Sequence[EncodedExample],
        batch_size: int,
        max_new_tokens: int,
        stop: list[str],
        samples: int,
    ) -> None:
        self.adapter, self.tokenizer, self.renderer = adapter, tokenizer, renderer
        self.metrics = metrics
        self.records, self.examples = records, examples
        self.batch_size, self.max_new_tokens, self.stop = batch_size, max_new_tokens, stop
        self.samples = samples
        self.generations: dict[str, list[str]] = {}
        self.needs_generation = any(m.needs == "generation" for m in metrics)

    def __call__(self, model: Any, stage: str) -> dict[str, Any]:
        if not is_main_process() or not self.records or not self.metrics:
            return {}
        losses = self._losses(model)
        predictions = [""] * len(self.records)
        if self.needs_generation:
            prompts = [self.renderer.prompt(r) for r in self.records]
            predictions = self.adapter.generate(
                model,
                self.tokenizer,
                prompts,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size,
                stop=self.stop,
            )
            self.generations[stage] = predictions
        groups: dict[str, list[int]] = defaultdict(list)
        tasks: dict[str, list[int]] = defaultdict(list)
        for i, record in enumerate(self.records):
            groups[record.source].append(i)
            if record.task is not None:
                tasks[record.task].append(i)
        total = (sum(v[0] for v in losses.values()), sum(v[1] for v in losses.values()))
        details: dict[str, Any] = {}
        result: dict[str, Any] = {"overall": self._compute(range(len(self.records)), predictions, total, details)}
        result["per_source"] = {
            name: self._compute(idx, predictions, losses.get(name, (0.0, 0))) for name, idx in groups.items()
        }
        if tasks:
            # Loss is kept per source (batches never mix sources); a task's loss is not computed separately.
            result["per_task"] = {
                name: {k: v for k, v in self._compute(idx, predictions, (0.0, 0)).items() if k not in self.loss_metrics}
                for name, idx in tasks.items()
            }
        if details:
            result["details"] = details
        return result

    @property
    def loss_metrics(self) -> set[str]:
        return {m.name for m in self.metrics if m.needs == "loss"}

    def _compute(
        self, indices: Any, predictions: list[str], loss: tuple[float, int], details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        idx = list(indices)
        outputs = EvalOutputs(
            predictions=[predictions[i] for i in idx],
            references=[self.records[i].answer for i in idx],
            records=[self.records[i] for i in idx],
            loss_sum=loss[0],
            loss_tokens=loss[1],
        )
        values = {}
        for metric in self.metrics:
            value = metric.compute(outputs)
            values[metric.name] = None if value is None or math.isnan(value) else round(float(value), 6)
            if details is not None and (extra := metric.details(outputs)) is not None:
                # Metrics of one family (accuracy, precision, recall, f1) give the same report: keep it once.
                same = next((name for name, kept in details.items() if kept == extra), None)
                details[metric.name] = extra if same is None else {"same_as": same}
        values["n"] = len(idx)
        return values

    def _losses(self, model: Any) -> dict[str, tuple[float, int]]:
        """Summed loss and trainable-token count per source (batches never mix sources)."""
        if not any(m.needs == "loss" for m in self.metrics):
            return {}
        import torch

        device = next(model.parameters()).device
        by_source: dict[str, list[EncodedExample]] = defaultdict(list)
        for example in self.examples:
            by_source[example.source].append(example)
        out: dict[str, tuple[float, int]] = {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for source, group in by_source.items():
                    group = sorted(group, key=lambda e: len(e.input_ids))  # less padding
                    total, count = 0.0, 0
                    for start in range(0, len(group), self.batch_size):
                        batch = self.adapter.collate(self.tokenizer, group[start : start + self.batch_size])
                        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                        loss_sum, n = self.adapter.loss_sum(model, batch)
                        total, count = total + float(loss_sum), count + int(n)
                    out[source] = (total, count)
        finally:
            model.train(was_training)
        return out

    def saved_samples(self) -> dict[str, Any]:
        """The sampled generations of every stage so far, as JSON (kept in the run directory, so that a resumed
        run still reports the generations of the stages evaluated before the interruption)."""
        n = min(self.samples, len(self.records))
        return {
            "ids": [r.id for r in self.records[:n]],
            "stages": {stage: predictions[:n] for stage, predictions in self.generations.items()},
        }

    def restore_samples(self, saved: dict[str, Any], *, up_to_step: int) -> list[str]:
        """Take back :meth:`saved_samples` for the stages a resume does not repeat: the baseline and
        ``step-<n>`` with n <= ``up_to_step``. Nothing is taken when the sampled records differ. Returns the
        stages restored."""
        n = min(self.samples, len(self.records))
        if saved.get("ids") != [r.id for r in self.records[:n]]:
            return []
        kept = []
        for stage, predictions in (saved.get("stages") or {}).items():
            at = (
                0
                if stage == "baseline"
                else int(stage[5:])
                if stage.startswith("step-") and stage[5:].isdigit()
                else None
            )
            if at is not None and at <= up_to_step and len(predictions) == n:
                # only the sampled rows are kept; sample_rows reads no further
                self.generations[stage] = list(predictions)
                kept.append(stage)
        return kept

    def sample_rows(self) -> list[dict[str, Any]]:
        """A few eval prompts with their reference and every stage's generation."""
        rows = []
        for i, record in enumerate(self.records[: self.samples]):
            row = {
                "id": record.id,
                "source": record.source,
                "prompt": record.messages[-2].content if len(record.messages) > 1 else "",
                "reference": record.answer,
            }
            for stage, predictions in self.generations.items():
                row[stage] = predictions[i]
            rows.append(row)
        return rows
