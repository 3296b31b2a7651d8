"""Builtin transforms: drop-invalid and dedup keep the right records and count every drop by reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import ift
from ift.builtin_plugins.transforms import DedupConfig, DropInvalid, DropInvalidConfig, ExactDedup
from ift.records import InstructionRecord, Message


def rec(rid: str, *turns: str) -> InstructionRecord:
    """Alternating user / assistant turns."""
    messages = [Message(("user", "assistant")[i % 2], text) for i, text in enumerate(turns)]
    return InstructionRecord(rid, "s", messages)


def test_drop_invalid_counts_by_reason() -> None:
    records = [
        rec("ok", "What is 2+2?", "4"),
        rec("empty-answer", "Say something", "   "),
        rec("empty-prompt", "", "answer"),
        rec("echo", "Repeat me", " repeat  ME\n"),
        rec("multi-ok", "a", "b", "c", "d"),
        InstructionRecord("answer-only", "s", [Message("assistant", "alone")]),
        InstructionRecord("no-turns", "s", []),
        InstructionRecord(
            "ends-with-user", "s", [Message("user", "q"), Message("assistant", "a"), Message("user", "q2")]
        ),
        InstructionRecord("two-users", "s", [Message("user", "q"), Message("user", "q2"), Message("assistant", "a")]),
        InstructionRecord(
            "late-system", "s", [Message("user", "q"), Message("system", "s"), Message("assistant", "a")]
        ),
        InstructionRecord("system-ok", "s", [Message("system", "s"), Message("user", "q"), Message("assistant", "a")]),
        InstructionRecord("system-only", "s", [Message("system", "s"), Message("assistant", "a")]),
        InstructionRecord(
            "bad-label", "s", [Message("user", "Pick"), Message("assistant", "c")], label="c", choices=["a", "b"]
        ),
        InstructionRecord(
            "good-label", "s", [Message("user", "Pick"), Message("assistant", "a")], label="a", choices=["a", "b"]
        ),
    ]
    tally = ift.Tally()
    kept = DropInvalid(DropInvalid.Config()).apply(records, tally)
    assert [r.id for r in kept] == ["ok", "multi-ok", "system-ok", "good-label"]
    assert dict(tally.dropped) == {
        "empty output": 1,
        "empty turn": 1,
        "answer identical to prompt": 1,
        "missing prompt": 2,
        "missing output": 2,
        "bad role order": 2,
        "label outside choices": 1,
    }
    assert dict(tally.changed) == {}
    assert len(DropInvalid(DropInvalidConfig(check_choices=False)).apply(records, ift.Tally())) == 5


def test_dedup_by_conversation_normalises_case_and_whitespace_and_keeps_the_first() -> None:
    records = [
        rec("a", "What is  2+2?", "4"),
        rec("b", "what is 2+2?", " 4 "),
        rec("c", "What is 2+2?", "four"),
        rec("d", "What is 2+2?", "4"),
    ]
    tally = ift.Tally()
    kept = ExactDedup(DedupConfig()).apply(records, tally)
    assert [r.id for r in kept] == ["a", "c"]
    assert dict(tally.dropped) == {"duplicate": 2}


def test_dedup_by_prompt() -> None:
    records = [rec("a", "Q", "A1"), rec("b", "q", "A2"), rec("c", "Other", "A1")]
    tally = ift.Tally()
    kept = ExactDedup(DedupConfig(by="prompt")).apply(records, tally)
    assert [r.id for r in kept] == ["a", "c"]
    assert dict(tally.dropped) == {"duplicate": 1}


def test_dedup_roles_matter() -> None:
    a = InstructionRecord("a", "s", [Message("system", "x"), Message("user", "q"), Message("assistant", "a")])
    b = InstructionRecord("b", "s", [Message("user", "x"), Message("user", "q"), Message("assistant", "a")])
    assert len(ExactDedup(DedupConfig()).apply([a, b], ift.Tally())) == 2


def test_dedup_never_drops_eval_records_and_drops_training_copies_of_them() -> None:
    def tagged(rid: str, split: str) -> InstructionRecord:
        record = rec(rid, "Q", "A")
        record.metadata["split"] = split
        return record

    records = [tagged("train", "auto"), tagged("eval", "eval"), tagged("eval-2", "eval"), tagged("train-2", "train")]
    tally = ift.Tally()
    kept = ExactDedup(DedupConfig()).apply(records, tally)
    assert [r.id for r in kept] == ["eval", "eval-2"]
    assert dict(tally.dropped) == {"duplicate": 2}


def test_dedup_config_rejects_unknown_mode() -> None:
    with pytest.raises(ValidationError):
        DedupConfig(by="answer")


def test_tally() -> None:
    tally = ift.Tally()
    tally.drop("too short")
    tally.drop("too short", 2)
    tally.change("masked email")
    assert (dict(tally.dropped), dict(tally.changed)) == ({"too short": 3}, {"masked email": 1})
