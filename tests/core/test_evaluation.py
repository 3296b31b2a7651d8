"""The evaluator groups results overall, per source and per task, and keeps metrics' detailed reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ift
from ift.builtin_plugins.metrics import ExactMatchMetric
from ift.evaluation import Evaluator


class _Answers(ift.ModelAdapter):
    """Generates a fixed answer per prompt (no model), so metric values are known in advance."""

    name = "fixed"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[str], **_: Any) -> list[str]:
        return [self.answers[p] for p in prompts]

    load_tokenizer = load_model = encode = collate = loss_sum = save = None  # type: ignore[assignment]


class _Renderer:
    def prompt(self, record: ift.InstructionRecord) -> str:
        return record.messages[0].content


class _CountsCorrect(ift.Metric):
    name = "counts"

    def compute(self, outputs: ift.EvalOutputs) -> float:
        return float(sum(p == r for p, r in zip(outputs.predictions, outputs.references, strict=True)))

    def details(self, outputs: ift.EvalOutputs) -> dict[str, Any]:
        return {"wrong": [r.id for r, p in zip(outputs.records, outputs.predictions, strict=True) if p != r.answer]}


def _record(rid: str, source: str, task: str | None, prompt: str, answer: str) -> ift.InstructionRecord:
    return ift.InstructionRecord(
        rid, source, [ift.Message("user", prompt), ift.Message("assistant", answer)], task=task
    )


def test_results_overall_per_source_per_task_and_details() -> None:
    records = [
        _record("1", "a", "math", "p1", "x"),
        _record("2", "a", "chat", "p2", "y"),
        _record("3", "b", "math", "p3", "z"),
        _record("4", "b", "math", "p4", "w"),
    ]
    adapter = _Answers({"p1": "x", "p2": "no", "p3": "z", "p4": "no"})
    evaluator = Evaluator(
        adapter=adapter,
        tokenizer=None,
        renderer=_Renderer(),  # type: ignore[arg-type]
        metrics=[ExactMatchMetric(ExactMatchMetric.Config()), _CountsCorrect(ift.ComponentConfig())],
        records=records,
        examples=[],
        batch_size=2,
        max_new_tokens=4,
        stop=[],
        samples=0,
    )
    result = evaluator(None, "final")
    assert result["overall"] == {"exact_match": 0.5, "counts": 2.0, "n": 4}
    assert result["per_source"] == {
        "a": {"exact_match": 0.5, "counts": 1.0, "n": 2},
        "b": {"exact_match": 0.5, "counts": 1.0, "n": 2},
    }
    assert set(result["per_task"]) == {"math", "chat"}
    assert result["per_task"]["chat"] == {"exact_match": 0.0, "counts": 0.0, "n": 1}
    assert result["per_task"]["math"] == {"exact_match": round(2 / 3, 6), "counts": 2.0, "n": 3}
    assert result["details"] == {"counts": {"wrong": ["2", "4"]}}  # details are of the overall group


def test_no_per_task_group_when_records_have_no_task() -> None:
    records = [_record("1", "a", None, "p1", "x")]
    evaluator = Evaluator(
        adapter=_Answers({"p1": "x"}),
        tokenizer=None,
        renderer=_Renderer(),  # type: ignore[arg-type]
        metrics=[ExactMatchMetric(ExactMatchMetric.Config())],
        records=records,
        examples=[],
        batch_size=2,
        max_new_tokens=4,
        stop=[],
        samples=0,
    )
    result = evaluator(None, "final")
    assert "per_task" not in result and "details" not in result


class _CountsAgain(_CountsCorrect):
    """Another metric of the same family: the same report, another number."""

    name = "counts_again"

    def compute(self, outputs: ift.EvalOutputs) -> float:
        return 2 * super().compute(outputs)


class _OtherReport(_CountsCorrect):
    name = "other"

    def details(self, outputs: ift.EvalOutputs) -> dict[str, Any]:
        return {"n": len(outputs.records)}


def test_a_report_identical_to_an_earlier_one_is_stored_once_as_a_reference() -> None:
    records = [_record("1", "a", None, "p1", "x"), _record("2", "a", None, "p2", "y")]
    metrics = [
        _CountsCorrect(ift.ComponentConfig()),
        _OtherReport(ift.ComponentConfig()),
        _CountsAgain(ift.ComponentConfig()),
    ]
    evaluator = Evaluator(
        adapter=_Answers({"p1": "x", "p2": "no"}),
        tokenizer=None,  # type: ignore[arg-type]
        renderer=_Renderer(),
        metrics=metrics,
        records=records,  # type: ignore[arg-type]
        examples=[],
        batch_size=2,
        max_new_tokens=4,
        stop=[],
        samples=0,
    )
    result = evaluator(None, "final")
    assert result["overall"] == {"counts": 1.0, "other": 1.0, "counts_again": 2.0, "n": 2}
    assert result["details"] == {"counts": {"wrong": ["2"]}, "other": {"n": 2}, "counts_again": {"same_as": "counts"}}
