"""Classification metrics (accuracy, precision, recall, F1) and their per-label report, on a known confusion with
every number computed by hand."""

from __future__ import annotations

import math

import pytest

import ift
from ift.builtin_plugins.metrics import AccuracyMetric, F1Metric, LabelConfig, PrecisionMetric, RecallMetric
from ift.records import InstructionRecord, Message

# truth:     refund refund refund track track login
# predicted: refund track  refund track login login
#   refund: TP 2, predicted 2, support 3 -> P 1,   R 2/3, F1 0.8
#   track:  TP 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 1/2
#   login:  TP 1, predicted 2, support 1 -> P 1/2, R 1,   F1 2/3
TRUTH = ["refund", "refund", "refund", "track_order", "track_order", "login"]
PREDICTED = ["refund", "track_order", "refund", "track_order", "login", "login"]


def outputs(truth: list[str], predicted: list[str], *, with_labels: bool = True) -> ift.EvalOutputs:
    records = [
        InstructionRecord(
            str(i),
            "s",
            [Message("user", "q"), Message("assistant", t)],
            label=t if with_labels and i % 2 == 0 else None,
        )  # half use the answer
        for i, t in enumerate(truth)
    ]
    return ift.EvalOutputs(predicted, list(truth), records)


@pytest.mark.parametrize(
    ("metric", "average", "expected"),
    [
        (AccuracyMetric, "macro", 4 / 6),
        (PrecisionMetric, "macro", (1 + 1 / 2 + 1 / 2) / 3),
        (RecallMetric, "macro", (2 / 3 + 1 / 2 + 1) / 3),
        (F1Metric, "macro", (0.8 + 1 / 2 + 2 / 3) / 3),
        (PrecisionMetric, "weighted", (3 * 1 + 2 * 1 / 2 + 1 * 1 / 2) / 6),
        (RecallMetric, "weighted", (3 * 2 / 3 + 2 * 1 / 2 + 1 * 1) / 6),
        (F1Metric, "weighted", (3 * 0.8 + 2 * 1 / 2 + 1 * 2 / 3) / 6),
        (F1Metric, "micro", 4 / 6),
    ],
)
def test_known_confusion(metric: type[ift.Metric], average: str, expected: float) -> None:
    value = metric(LabelConfig(average=average)).compute(outputs(TRUTH, PREDICTED))  # type: ignore[arg-type]
    assert value == pytest.approx(expected)


def test_macro_is_the_default() -> None:
    assert LabelConfig().average == "macro"
    assert F1Metric(LabelConfig()).compute(outputs(TRUTH, PREDICTED)) == pytest.approx(59 / 90)


@pytest.mark.parametrize("metric", [AccuracyMetric, PrecisionMetric, RecallMetric, F1Metric])
def test_details_are_the_per_label_report(metric: type[ift.Metric]) -> None:
    details = metric(LabelConfig()).details(outputs(TRUTH, PREDICTED))
    assert details is not None
    # labels are named as in the data (underscores kept), though compared after normalisation
    assert details["labels"] == {
        "login": {"precision": 0.5, "recall": 1.0, "f1": round(2 / 3, 6), "support": 1},
        "refund": {"precision": 1.0, "recall": round(2 / 3, 6), "f1": 0.8, "support": 3},
        "track_order": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
    }
    assert details["macro"] == {"precision": round(2 / 3, 6), "recall": round(13 / 18, 6), "f1": round(59 / 90, 6)}
    assert details["weighted"] == {"precision": 0.75, "recall": round(2 / 3, 6), "f1": round(61 / 90, 6)}
    assert details["average"] == "macro" and details["outside_labels"] == 0


def test_predictions_outside_the_labels_are_wrong_and_counted() -> None:
    # truth a, b, b; predicted a, "no idea", b -> a: P 1 R 1; b: P 1 R 1/2 (F1 2/3); one prediction is no label
    out = outputs(["a", "b", "b"], ["A.", "no idea", "b"])
    assert AccuracyMetric(LabelConfig()).compute(out) == pytest.approx(2 / 3)
    assert RecallMetric(LabelConfig()).compute(out) == pytest.approx((1 + 1 / 2) / 2)
    assert PrecisionMetric(LabelConfig()).compute(out) == pytest.approx(1.0)
    details = F1Metric(LabelConfig()).details(out)
    assert details is not None and details["outside_labels"] == 1
    assert details["labels"]["b"] == {"precision": 1.0, "recall": 0.5, "f1": round(2 / 3, 6), "support": 2}


def test_empty_group_has_no_number_and_no_details() -> None:
    empty = ift.EvalOutputs([], [], [])
    assert math.isnan(F1Metric(LabelConfig()).compute(empty))
    assert F1Metric(LabelConfig()).details(empty) is None


def test_label_field_wins_over_the_answer() -> None:
    record = InstructionRecord(
        "1", "s", [Message("user", "q"), Message("assistant", "I think it is a refund")], label="refund"
    )
    out = ift.EvalOutputs(["refund"], [record.answer], [record])
    assert AccuracyMetric(LabelConfig()).compute(out) == 1.0
    details = AccuracyMetric(LabelConfig()).details(out)
    assert details is not None and list(details["labels"]) == ["refund"]
