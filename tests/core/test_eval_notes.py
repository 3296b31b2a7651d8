"""Nothing vanishes silently from the eval set: a run says, in its output, how many records of an eval table
``eval.max_examples`` cut and how many eval records the length policy dropped or truncated while encoding, and
its manifest counts them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ift.data import data_notes

TRAIN = [{"instruction": f"Spell {w}", "output": " ".join(w)} for w in ["cat", "dog", "sun", "map", "red", "toy"]]
EVAL = [{"instruction": f"Say {w}", "output": w} for w in ["a", "b", "c", "d"]] + [
    {"instruction": "Say x 200 times", "output": "x" * 200}
]  # longer than max_length: its answer is cut


def recipe(model: dict[str, Any], **trainer: Any) -> dict[str, Any]:
    return {
        "data": [
            {"source": "jsonl", "path": "train.jsonl", "split": "train"},
            {"source": "jsonl", "path": "eval.jsonl", "split": "eval", "name": "held"},
        ],
        "template": {"name": "alpaca"},
        "model": model,
        "trainer": {"max_steps": 1, "batch_size": 2, "max_length": 96, **trainer},
        "eval": {"metrics": ["loss"], "baseline": False},
    }


def test_the_run_says_what_left_the_eval_set(
    ift_run: Any, ift_tiny_model_table: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # eval.max_examples = 4 cuts the last record of the table; the long one is listed first, so it stays
    run = ift_run(
        recipe(ift_tiny_model_table, overlong="drop"),
        files={"train.jsonl": TRAIN, "eval.jsonl": EVAL[::-1]},
        overrides=["eval.max_examples=4"],
    )
    out = capsys.readouterr().out
    assert "note: eval.max_examples = 4 kept 4 of the 5 records of eval table 'held'" in out
    assert "note: encoding dropped 1 of the 4 eval records (longer than max_length: 1)" in out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["split"]["cut_by_max_examples"] == {"held": {"records": 5, "kept": 4, "max_examples": 4}}
    assert manifest["data"]["encoding"]["eval"]["out"] == 3


def test_truncated_eval_records_are_said(
    ift_run: Any, ift_tiny_model_table: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    ift_run(recipe(ift_tiny_model_table), files={"train.jsonl": TRAIN, "eval.jsonl": EVAL})
    out = capsys.readouterr().out
    assert "note: 1 of the 5 eval records were truncated to trainer.max_length, so they are evaluated cut" in out
    assert "encoding dropped" not in out and "eval.max_examples" not in out


def test_no_note_when_nothing_left() -> None:
    report = {
        "encoding": {"train": {"in": 3, "out": 3, "reasons": {}}, "eval": {"in": 2, "out": 2, "reasons": {}}},
        "split": {},
        "transforms": [],
    }
    assert data_notes(report) == []
    report["encoding"]["train"] = {"in": 3, "out": 1, "reasons": {"longer than max_length": 2}}
    assert data_notes(report) == ["encoding dropped 2 of the 3 train records (longer than max_length: 2)"]
