"""The contract of metrics."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest

from ift.components import EvalOutputs, Metric
from ift.records import InstructionRecord, Message
from ift.testing.contracts.base import ComponentContract, is_number


@dataclass
class MetricCase:
    """Known inputs and the value the metric must give (``float('nan')`` when undefined). Without
    ``records``, each reference becomes a one-turn record whose answer it is."""

    predictions: list[str]
    references: list[str]
    expected: float
    records: list[InstructionRecord] | None = None
    loss_sum: float = 0.0
    loss_tokens: int = 0
    tolerance: float = 1e-6
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def outputs(self) -> EvalOutputs:
        records = (
            self.records
            if self.records is not None
            else [
                InstructionRecord(f"case-{i}", "case", [Message("user", "?"), Message("assistant", ref)])
                for i, ref in enumerate(self.references)
            ]
        )
        return EvalOutputs(
            predictions=list(self.predictions),
            references=list(self.references),
            records=records,
            loss_sum=self.loss_sum,
            loss_tokens=self.loss_tokens,
        )


def _value(metric: Metric, outputs: EvalOutputs) -> float | None:
    value = metric.compute(outputs)
    assert value is None or is_number(value), f"compute() returned {value!r}; it must be a number (or None)"
    return None if value is None else float(value)


class MetricContract(ComponentContract):
    """A metric gives the right value on known inputs, does not crash on edge cases (no examples, an empty
    prediction), is deterministic, declares what it needs, and keeps its details JSON-serializable.

    Set ``component``, ``config`` and ``cases``: :class:`MetricCase` values with the expected results."""

    kind = "metric"
    cases: ClassVar[list[MetricCase]] = []

    def make_metric(self) -> Metric:
        cls = self.component_class()
        return cls(self.make_config(None))  # type: ignore[arg-type]

    def test_known_cases(self) -> None:
        if not self.cases:
            pytest.fail(f"{type(self).__name__}: give `cases` (MetricCase values with expected results)")
        metric = self.make_metric()
        for case in self.cases:
            value = _value(metric, case.outputs())
            label = case.note or f"predictions {case.predictions} vs references {case.references}"
            if math.isnan(case.expected):
                assert value is None or math.isnan(value), f"{label}: expected nan, got {value}"
            else:
                assert value is not None and math.isclose(value, case.expected, rel_tol=0, abs_tol=case.tolerance), (
                    f"{label}: expected {case.expected}, got {value}"
                )

    def test_empty_input_does_not_crash(self) -> None:
        metric = self.make_metric()
        empty = EvalOutputs(predictions=[], references=[], records=[])
        _value(metric, empty)
        details = metric.details(empty)
        assert details is None or isinstance(details, dict)

    def test_empty_prediction_does_not_crash(self) -> None:
        metric = self.make_metric()
        record = InstructionRecord("edge", "case", [Message("user", "?"), Message("assistant", "yes")])
        value = _value(
            metric, EvalOutputs(predictions=[""], references=["yes"], records=[record], loss_sum=2.0, loss_tokens=1)
        )
        assert value is None or not math.isinf(value) or metric.needs == "loss"

    def test_is_deterministic(self) -> None:
        for case in self.cases:
            one, two = _value(self.make_metric(), case.outputs()), _value(self.make_metric(), case.outputs())
            assert one == two or (one is not None and two is not None and math.isnan(one) and math.isnan(two))

    def test_declares_what_it_needs(self) -> None:
        cls = self.component_class()
        assert cls.needs in ("generation", "loss"), f"needs must be 'generation' or 'loss', not {cls.needs!r}"
        assert isinstance(cls.higher_is_better, bool)

    def test_details_are_json_serializable(self) -> None:
        metric = self.make_metric()
        for case in self.cases:
            details = metric.details(case.outputs())
            assert details is None or isinstance(details, dict), "details() must return a dict or None"
            json.dumps(details)  # kept in metrics.json
