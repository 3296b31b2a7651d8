"""Builtin transforms: drop-invalid and dedup keep the right records and count every drop by reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import ift
from ift.builtin_plugins.transforms import DedupConfig, DropInvalid, ExactDedup
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
        rec("echo", "Repeat me", " Repeat me\n"),
        rec("multi-ok", "a", "b", "c", "d"),
        InstructionRecord("answer-only", "s", [Message("assistant", "alone")]),
    ]
    tally = ift.Tally()
    kept = DropInvalid(DropInvalid.Config()).apply(records, tally)
    assert [r.id for r in kept] == ["ok", "multi-ok", "answer-only"]
    assert dict(tally.dropped) == {"empty turn": 2, "answer identical to prompt": 1}
    assert dict(tally.changed) == {}


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


def test_dedup_config_rejects_unknown_mode() -> None:
    with pytest.raises(ValidationError):
        DedupConfig(by="answer")


def test_tally() -> None:
    tally = ift.Tally()
    tally.drop("too short")
    tally.drop("too short", 2)
    tally.change("masked email")
    assert (dict(tally.dropped), dict(tally.changed)) == ({"too short": 3}, {"masked email": 1})
