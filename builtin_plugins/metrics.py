"""Builtin metrics: eval loss and perplexity, and metrics on generated answers (exact match, ROUGE-L,
and label metrics through scikit-learn)."""

from __future__ import annotations

import math
import re
import string
from typing import Any, ClassVar, Literal

from pydantic import Field

import ift

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and collapse whitespace (SQuAD-style normalisation)."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


class LossMetric(ift.Metric):
    """Mean cross-entropy per trainable token on the held-out split."""

    name = "loss"
    needs: ClassVar[Literal["generation", "loss"]] = "loss"
    higher_is_better = False

    def compute(self, outputs: ift.EvalOutputs) -> float:
        return outputs.loss_sum / outputs.loss_tokens if outputs.loss_tokens else float("nan")


class PerplexityMetric(LossMetric):
    """exp(loss)."""

    name = "perplexity"

    def compute(self, outputs: ift.EvalOutputs) -> float:
        loss = super().compute(outputs)
        return math.exp(min(loss, 50.0)) if not math.isnan(loss) else float("nan")


class MatchConfig(ift.ComponentConfig):
    normalize: bool = Field(True, description="Compare after lower-casing and removing punctuation.")


class ExactMatchMetric(ift.Metric):
    """Share of answers equal to the reference."""

    name = "exact_match"
    Config = MatchConfig

    def compute(self, outputs: ift.EvalOutputs) -> float:
        if not outputs.references:
            return float("nan")
        norm = normalize_answer if self.config.normalize else str.strip  # type: ignore[attr-defined]
        hits = sum(norm(p) == norm(r) for p, r in zip(outputs.predictions, outputs.references, strict=True))
        return hits / len(outputs.references)


def lcs_length(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace tokens of the normalised texts (Lin, 2004)."""
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


class RougeLMetric(ift.Metric):
    """Mean ROUGE-L F1 between answers and references."""

    name = "rouge_l"

    def compute(self, outputs: ift.EvalOutputs) -> float:
        if not outputs.references:
            return float("nan")
        scores = [rouge_l(p, r) for p, r in zip(outputs.predictions, outputs.references, strict=True)]
        return sum(scores) / len(scores)


class LabelConfig(ift.ComponentConfig):
    average: Literal["macro", "micro", "weighted"] = Field(
        "macro",
        description="How precision, recall and F1 combine the labels: macro (each label counts the same), "
        "micro (each answer counts the same) or weighted (labels weighted by their support).",
    )


class LabelMetric(ift.Metric):
    """Label-style answers: the normalised answer is the predicted label, the reference (or the record's
    ``label``) the true one. An answer outside the known labels counts as wrong."""

    Config: ClassVar[type[ift.ComponentConfig]] = LabelConfig

    def labels(self, outputs: ift.EvalOutputs) -> tuple[list[str], list[str]]:
        truth = [
            normalize_answer(rec.label if rec.label is not None else ref)
            for rec, ref in zip(outputs.records, outputs.references, strict=True)
        ]
        predicted = [normalize_answer(p) for p in outputs.predictions]
        return truth, predicted

    def _score(self, kind: str, outputs: ift.EvalOutputs) -> float:
        from sklearn.metrics import f1_score, precision_score, recall_score

        truth, predicted = self.labels(outputs)
        if not truth:
            return float("nan")
        labels = sorted(set(truth))  # predictions outside the true label set only lower recall/precision
        fn = {"precision": precision_score, "recall": recall_score, "f1": f1_score}[kind]
        return float(
            fn(
                truth,
                predicted,
                labels=labels,
                average=self.config.average,  # type: ignore[attr-defined]
                zero_division=0,
            )
        )

    def details(self, outputs: ift.EvalOutputs) -> dict[str, Any] | None:
        """scikit-learn's classification report: precision, recall, F1 and support of each true label (named as
        in the data), the macro / weighted averages, and how many predictions were none of the labels."""
        from sklearn.metrics import classification_report

        truth, predicted = self.labels(outputs)
        if not truth:
            return None
        names: dict[str, str] = {}
        for record, reference, key in zip(outputs.records, outputs.references, truth, strict=True):
            names.setdefault(key, (record.label if record.label is not None else reference).strip())
        keys = sorted(names)
        report = classification_report(truth, predicted, labels=keys, output_dict=True, zero_division=0)
        per_label = {
            names[k]: {
                "precision": round(report[k]["precision"], 6),
                "recall": round(report[k]["recall"], 6),
                "f1": round(report[k]["f1-score"], 6),
                "support": int(report[k]["support"]),
            }
            for k in keys
        }
        averages = {
            name: {
                "precision": round(report[name]["precision"], 6),
                "recall": round(report[name]["recall"], 6),
                "f1": round(report[name]["f1-score"], 6),
            }
            for name in ("macro avg", "weighted avg")
            if name in report
        }
        # the family's averaging (accuracy has none: its report is the macro one, as the others' by default)
        return {
            "average": getattr(self.config, "average", "macro"),
            "labels": per_label,
            "macro": averages.get("macro avg"),
            "weighted": averages.get("weighted avg"),
            "outside_labels": sum(1 for p in predicted if p not in names),
        }


class AccuracyConfig(ift.ComponentConfig):
    """Accuracy has no averaging to choose (an ``average`` key is an unknown-key error, not silently ignored)."""


class AccuracyMetric(LabelMetric):
    name = "accuracy"
    Config = AccuracyConfig

    def compute(self, outputs: ift.EvalOutputs) -> float:
        from sklearn.metrics import accuracy_score

        truth, predicted = self.labels(outputs)
        return float(accuracy_score(truth, predicted)) if truth else float("nan")


class PrecisionMetric(LabelMetric):
    name = "precision"

    def compute(self, outputs: ift.EvalOutputs) -> float:
        return self._score("precision", outputs)


class RecallMetric(LabelMetric):
    name = "recall"

    def compute(self, outputs: ift.EvalOutputs) -> float:
        return self._score("recall", outputs)


class F1Metric(LabelMetric):
    name = "f1"

    def compute(self, outputs: ift.EvalOutputs) -> float:
        return self._score("f1", outputs)


@ift.hookimpl
def ift_register_metrics() -> list[type]:
    return [
        LossMetric,
        PerplexityMetric,
        ExactMatchMetric,
        RougeLMetric,
        AccuracyMetric,
        PrecisionMetric,
        RecallMetric,
        F1Metric,
    ]
