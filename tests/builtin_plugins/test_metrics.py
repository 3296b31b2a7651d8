"""Builtin metrics on known inputs, with expected numbers computed by hand."""

from __future__ import annotations

import math

import pytest

import ift
from ift.builtin_plugins.metrics import (
    AccuracyMetric,
    ExactMatchMetric,
    F1Metric,
    LabelConfig,
    LossMetric,
    MatchConfig,
    PerplexityMetric,
    PrecisionMetric,
    RecallMetric,
    RougeLMetric,
    lcs_length,
    normalize_answer,
    rouge_l,
)
from ift.records import InstructionRecord, Message


def outputs(
    predictions: list[str],
    references: list[str],
    labels: list[str | None] | None = None,
    loss_sum: float = 0.0,
    loss_tokens: int = 0,
) -> ift.EvalOutputs:
    labels = labels or [None] * len(references)
    records = [
        InstructionRecord(str(i), "s", [Message("user", "q"), Message("assistant", ref)], label=label)
        for i, (ref, label) in enumerate(zip(references, labels, strict=True))
    ]
    return ift.EvalOutputs(predictions, references, records, loss_sum=loss_sum, loss_tokens=loss_tokens)


def test_normalize_answer() -> None:
    assert normalize_answer("  The Cat's  HAT!\n") == "the cat s hat"


def test_exact_match() -> None:
    out = outputs(["Paris.", " Rome ", "x"], ["paris", "Rome", "y"])
    assert ExactMatchMetric(MatchConfig()).compute(out) == pytest.approx(2 / 3)
    assert ExactMatchMetric(MatchConfig(normalize=False)).compute(out) == pytest.approx(1 / 3)
    assert math.isnan(ExactMatchMetric(MatchConfig()).compute(outputs([], [])))


def test_lcs_and_rouge_l() -> None:
    assert lcs_length("a b c d".split(), "a c".split()) == 2
    assert lcs_length([], ["a"]) == 0
    # LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(5 / 6)
    # LCS 2, P = 2/4, R = 2/2: F = 2 * 0.5 * 1 / 1.5 = 2/3
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("x", "y") == 0.0
    assert rouge_l("", "y") == 0.0


def test_rouge_l_metric_is_the_mean() -> None:
    out = outputs(["the cat sat on the mat", "a b c d", "x"], ["the cat is on the mat", "a c", "y"])
    assert RougeLMetric(ift.ComponentConfig()).compute(out) == pytest.approx((5 / 6 + 2 / 3 + 0) / 3)


def test_loss_and_perplexity() -> None:
    out = outputs([], [], loss_sum=6.0, loss_tokens=4)
    assert LossMetric(ift.ComponentConfig()).compute(out) == 1.5
    assert PerplexityMetric(ift.ComponentConfig()).compute(out) == pytest.approx(math.exp(1.5))
    assert math.isnan(LossMetric(ift.ComponentConfig()).compute(outputs([], [])))
    assert math.isnan(PerplexityMetric(ift.ComponentConfig()).compute(outputs([], [])))
    huge = outputs([], [], loss_sum=1000.0, loss_tokens=1)
    assert PerplexityMetric(ift.ComponentConfig()).compute(huge) == pytest.approx(math.exp(50))
    assert LossMetric.needs == PerplexityMetric.needs == "loss"
    assert not LossMetric.higher_is_better and not PerplexityMetric.higher_is_better
    assert ExactMatchMetric.needs == "generation" and ExactMatchMetric.higher_is_better


# truth = [positive, positive, neg, neg] (the first two from record.label, the last two from the
# reference); predicted = [positive, neg, neg, neg]
# positive: P = 1/1, R = 1/2, F1 = 2/3;  neg: P = 2/3, R = 2/2, F1 = 4/5


@pytest.mark.parametrize(
    ("metric", "average", "expected"),
    [
        (AccuracyMetric, "macro", 3 / 4),
        (PrecisionMetric, "macro", (1 + 2 / 3) / 2),
        (RecallMetric, "macro", (1 / 2 + 1) / 2),
        (F1Metric, "macro", (2 / 3 + 4 / 5) / 2),
        (PrecisionMetric, "micro", 3 / 4),
        (RecallMetric, "micro", 3 / 4),
        (F1Metric, "micro", 3 / 4),
        # weighted by support (2 and 2) equals macro here
        (F1Metric, "weighted", (2 / 3 + 4 / 5) / 2),
    ],
)
def test_label_metrics(metric: type[ift.Metric], average: str, expected: float) -> None:
    out = outputs(
        ["Positive", "neg", "NEG.", "neg"], ["x", "y", "neg", "neg"], labels=["Positive.", "positive", None, None]
    )
    assert metric(LabelConfig(average=average)).compute(out) == pytest.approx(expected)  # type: ignore[arg-type]


def test_label_metrics_use_the_reference_without_a_label() -> None:
    out = outputs(["yes", "no", "maybe"], ["Yes", "yes", "no"])
    assert AccuracyMetric(LabelConfig()).compute(out) == pytest.approx(1 / 3)
    # labels {no, yes}; "maybe" is outside them. no: P = 0/1, R = 0/1; yes: P = 1/1, R = 1/2
    assert RecallMetric(LabelConfig()).compute(out) == pytest.approx((0 + 1 / 2) / 2)
    assert PrecisionMetric(LabelConfig()).compute(out) == pytest.approx((0 + 1) / 2)
    assert math.isnan(AccuracyMetric(LabelConfig()).compute(outputs([], [])))
    assert math.isnan(F1Metric(LabelConfig()).compute(outputs([], [])))


def test_builtin_metrics_are_registered(host: object) -> None:
    assert host.names("metric") == [
        "accuracy",
        "exact_match",
        "f1",
        "loss",
        "perplexity",
        "precision",  # type: ignore[attr-defined]
        "recall",
        "rouge_l",
    ]
