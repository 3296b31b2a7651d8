"""The data quality report on a tiny hand-checked set: every metric, the JSON/HTML files and the table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins.quality import format_report_table, quality_report, write_report
from ift.builtin_plugins.quality.compute import distinct_n
from ift.builtin_plugins.quality.heuristics import looks_truncated
from ift.builtin_plugins.quality.verbs import leading_verb

M = ift.Message
GRAVITY = (
    "Gravity is the force that pulls objects toward each other and it keeps planets in orbit around the sun "
    "and it also makes apples fall"
)  # 26 words, no final punctuation


def record(rid: str, source: str, *turns: tuple[str, str], **kw: object) -> ift.InstructionRecord:
    return ift.InstructionRecord(rid, source, [M(role, text) for role, text in turns], metadata={"split": "auto"}, **kw)  # type: ignore[arg-type]


def tiny() -> list[ift.InstructionRecord]:
    u, a, s = "user", "assistant", "system"
    choices = ["positive", "negative"]
    return [
        record("a1", "a", (u, "Write a short poem about the sea."), (a, "Waves rise and fall.")),
        record("a2", "a", (u, "Write a story about a dog."), (a, "A dog ran home.")),
        record("a3", "a", (u, "What is the capital of France?"), (a, "Paris.")),
        record("a4", "a", (u, "Summarize the text:\n\nThe cat sat."), (a, "The cat sat.")),  # copies its input
        record(
            "b1",
            "b",
            (s, "Be brief."),
            (u, "Classify the sentiment of"),
            (a, "positive"),
            task="cls",
            label="positive",
            choices=choices,
        ),  # fragmentary
        record("b2", "b", (u, "Hi"), (a, ""), task="cls", choices=choices),  # very short, empty, outside choices
        record("b3", "b", (u, "Explain gravity"), (a, GRAVITY)),  # very short, truncated-looking
        record("b4", "b", (u, "Tell me a joke"), (u, "Please"), (a, "No.")),  # bad role order
    ]


@pytest.fixture(scope="module")
def report() -> dict:
    eval_records = [record("e", "eval", ("user", "What is the capital of France?"), ("assistant", "Paris"))]
    return quality_report(tiny(), eval_records=eval_records)


def test_diversity(report: dict) -> None:
    a, b = report["per_source"]["a"]["diversity"], report["per_source"]["b"]["diversity"]
    # a's instructions: 25 words, 18 distinct; 21 bigrams, 20 distinct ("write a" twice)
    assert (a["distinct_1"], a["distinct_2"]) == (round(18 / 25, 4), round(20 / 21, 4))
    assert a["leading_verbs"] == {
        "count": 3,
        "share": 0.75,
        "unique": 2,
        "top": [{"verb": "write", "count": 2}, {"verb": "summarize", "count": 1}],
    }
    assert a["verb_objects"]["top"] == [
        {"verb": "write", "object": "poem", "count": 1},
        {"verb": "write", "object": "story", "count": 1},
        {"verb": "summarize", "object": "text", "count": 1},
    ]
    assert a["verb_objects"]["tree"][0] == {
        "verb": "write",
        "count": 2,
        "objects": [{"object": "poem", "count": 1}, {"object": "story", "count": 1}],
    }
    assert {(p["verb"], p["object"]) for p in b["verb_objects"]["top"]} == {
        ("classify", "sentiment"),
        ("explain", "gravity"),
        ("tell", "joke"),
    }
    assert b["tasks"] == {"counts": {"cls": 2, "creative-writing": 1, "question-answering": 1}, "inferred": 2}
    assert report["overall"]["diversity"]["near_duplicates"] == {"count": 0, "share": 0.0}


def counts(value: object) -> object:
    """A flagged item without its ids and examples."""
    return {k: v for k, v in value.items() if k not in ("ids", "examples")} if isinstance(value, dict) else value


def test_clarity(report: dict) -> None:
    a, b = report["per_source"]["a"]["clarity"], report["per_source"]["b"]["clarity"]
    assert a["instruction_words"] == {
        "min": 6,
        "p10": 6,
        "p25": 6,
        "median": 6,
        "p75": 6,
        "p90": 7,
        "max": 7,
        "mean": 6.25,
    }
    assert a["histogram"]["bins"][:5] == ["0", "1-2", "3-4", "5-9", "10-19"]
    assert a["histogram"]["counts"] == [0, 0, 0, 4, 0, 0, 0, 0, 0, 0]
    assert b["very_short"] == {
        "count": 2,
        "share": 0.5,
        "ids": ["b/b2", "b/b3"],  # "Hi", "Explain gravity"
        "examples": [{"id": "b/b2", "instruction": "Hi"}, {"id": "b/b3", "instruction": "Explain gravity"}],
    }
    assert counts(b["fragmentary"]) == {"count": 1, "share": 0.25}  # "Classify the sentiment of"
    assert a["very_short"]["count"] == a["fragmentary"]["count"] == 0


def test_consistency(report: dict) -> None:
    a, b = report["per_source"]["a"]["consistency"], report["per_source"]["b"]["consistency"]
    assert a["schema_conformity"] == 1.0 and a["turns"] == {"2": 4}
    assert b["schema_conformity"] == 0.5
    # overall: each record against its own source's schema (4 of a + 2 of b), not one schema across sources
    assert report["overall"]["consistency"]["schema_conformity"] == 0.75
    assert len(b["schema_nonconforming"]["ids"]) == 2 and all(
        i.startswith("b/") for i in b["schema_nonconforming"]["ids"]
    )
    assert b["schemas"] == [
        {"fields": "(messages only)", "count": 2},
        {"fields": "system, task, label, choices", "count": 1},
        {"fields": "task, choices", "count": 1},
    ]
    assert b["role_order_problems"] == {
        "count": 1,
        "share": 0.25,
        "by_kind": {"bad role order": 1},
        "ids": ["b/b4"],
        "examples": [{"id": "b/b4", "instruction": "Tell me a joke"}],
    }
    assert b["turns"] == {"2": 2, "3": 2}


def test_accuracy_proxies(report: dict) -> None:
    a, b = report["per_source"]["a"]["accuracy"], report["per_source"]["b"]["accuracy"]
    assert a["copied_input"]["ids"] == ["a/a4"]
    a, b = {k: counts(v) for k, v in a.items()}, {k: counts(v) for k, v in b.items()}
    assert a == {
        "empty_outputs": {"count": 0, "share": 0.0},
        "copied_input": {"count": 1, "share": 0.25},
        "truncated_outputs": {"count": 0, "share": 0.0},
        "with_choices": 0,
        "outside_choices": {"count": 0, "share": 0.0},
    }
    assert b == {
        "empty_outputs": {"count": 1, "share": 0.25},
        "copied_input": {"count": 0, "share": 0.0},
        "truncated_outputs": {"count": 1, "share": 0.25},
        "with_choices": 2,
        "outside_choices": {"count": 1, "share": 0.5},
    }
    overall = report["overall"]["accuracy"]
    assert (overall["empty_outputs"]["count"], overall["copied_input"]["count"]) == (1, 1)


def test_overall_and_contamination(report: dict) -> None:
    assert report["records"] == 8 and report["sources"] == {"a": 4, "b": 4}
    assert report["overall"]["records"] == 8
    assert report["overall"]["diversity"]["leading_verbs"]["count"] == 6
    contaminated = report["contamination"]
    examples = contaminated.pop("examples")
    assert contaminated == {
        "n": 13,
        "eval_records": 1,
        "count": 1,
        "share": 0.125,
        "ids": ["a/a3"],
        "per_source": {"a": {"count": 1, "share": 0.25}, "b": {"count": 0, "share": 0.0}},
    }
    assert examples == [{"id": "a/a3", "instruction": "What is the capital of France?"}]  # the overlapping one
    assert "contamination" not in quality_report(tiny())


def test_empty_record_list() -> None:
    empty = quality_report([])
    assert empty["overall"]["records"] == 0 and empty["per_source"] == {}
    assert "records" in format_report_table(empty)


def test_heuristics() -> None:
    assert leading_verb("Could you please write me three short tips for sleeping?") == ("write", "tips")
    assert leading_verb("Explain how tides work") == ("explain", None)
    assert leading_verb("Paris is the capital of which country?") == (None, None)
    assert distinct_n([["a", "b", "a"]], 1) == round(2 / 3, 4) and distinct_n([[]], 2) == 0.0
    assert looks_truncated("```python\nprint(1)") and looks_truncated("We went to the")
    assert not looks_truncated("Paris") and not looks_truncated("- one item\n- " + "word " * 25)


def test_files_and_table(report: dict, tmp_path: Path) -> None:
    write_report(report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "data_report.json").read_text()) == report
    html = (tmp_path / "out" / "data_report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # lengths, verb sunburst, tasks and domains
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # self-contained: nothing fetched
    assert "Source: b" in html and "bad role order" in html
    table = format_report_table(report)
    lines = table.splitlines()
    assert lines[0].split() == ["overall", "a", "b"]
    assert re.search(r"empty outputs\s+1 \(12\.5%\)\s+0 \(0\.0%\)\s+1 \(25\.0%\)", table)
    assert re.search(r"answers outside choices\s+1 of 2\s+0 of 0\s+1 of 2", table)
    assert lines[-1].startswith("overlapping the eval set (1 eval records")


def test_overall_conformity_uses_each_sources_own_schema() -> None:
    from ift.builtin_plugins.quality import quality_report
    from ift.records import InstructionRecord, Message

    def record(source: str, i: int, task: str | None) -> InstructionRecord:
        return InstructionRecord(
            f"r{i}", source, [Message("user", f"Name a colour number {i}."), Message("assistant", "Blue.")], task=task
        )

    # two sources, each 100% consistent with its own shape (one carries a task, one does not)
    records = [record("tasks", i, "colours") for i in range(3)] + [record("plain", i, None) for i in range(2)]
    report = quality_report(records)
    assert report["overall"]["consistency"]["schema_conformity"] == 1.0  # was 0.6: one schema across both
    assert "ids" not in report["overall"]["consistency"]["schema_nonconforming"]
