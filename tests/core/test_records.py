"""Normalising alpaca / messages / sharegpt / prompt-completion rows into InstructionRecords."""

from __future__ import annotations

from typing import Any

import pytest

from ift.records import InstructionRecord, Message, RowError, detect_format, normalize_row

U, A, S = "user", "assistant", "system"


def pairs(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in messages]


def test_alpaca_without_input() -> None:
    messages, extras = normalize_row({"instruction": "Add 2 and 2.", "output": "4"})
    assert pairs(messages) == [(U, "Add 2 and 2."), (A, "4")]
    assert extras == {}


def test_alpaca_with_input_and_blank_input() -> None:
    row = {"instruction": "Translate.", "input": "bonjour", "output": "hello"}
    assert pairs(normalize_row(row, "alpaca")[0]) == [(U, "Translate.\n\nbonjour"), (A, "hello")]
    row = {"instruction": "Translate.", "input": "  \n", "output": "hello"}
    assert pairs(normalize_row(row, "alpaca")[0]) == [(U, "Translate."), (A, "hello")]


def test_messages_format() -> None:
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello"}]}
    assert pairs(normalize_row(row)[0]) == [(S, "Be brief."), (U, "Hi"), (A, "Hello")]


def test_sharegpt_roles_are_mapped() -> None:
    row = {"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q1"},
                             {"from": "gpt", "value": "a1"}, {"from": "Human", "value": "q2"},
                             {"from": "bot", "value": "a2"}]}
    assert pairs(normalize_row(row)[0]) == [(S, "sys"), (U, "q1"), (A, "a1"), (U, "q2"), (A, "a2")]


def test_prompt_completion() -> None:
    messages, _ = normalize_row({"prompt": "2+2=", "completion": "4"})
    assert pairs(messages) == [(U, "2+2="), (A, "4")]


def test_system_prompt_is_added_only_when_missing() -> None:
    messages, _ = normalize_row({"prompt": "p", "completion": "c"}, system="You are terse.")
    assert pairs(messages) == [(S, "You are terse."), (U, "p"), (A, "c")]
    row = {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "p"},
                        {"role": "assistant", "content": "c"}]}
    assert pairs(normalize_row(row, system="You are terse.")[0]) == [(S, "own"), (U, "p"), (A, "c")]


def test_extras_label_task_choices_metadata() -> None:
    row = {"instruction": "Sentiment?", "output": "positive", "label": "positive", "task": 7,
           "choices": ["positive", "negative", 3], "metadata": {"lang": "en"}}
    _, extras = normalize_row(row)
    assert extras == {"label": "positive", "task": "7", "choices": ["positive", "negative", "3"],
                      "metadata": {"lang": "en"}}


@pytest.mark.parametrize(
    ("row", "fmt", "message"),
    [
        ({"instruction": "x"}, "alpaca", "missing field 'output'"),
        ({"output": "x"}, "alpaca", "missing field 'instruction'"),
        ({"instruction": "x", "output": 4}, "alpaca", "field 'output' must be a string, got int"),
        ({"prompt": "p"}, "prompt-completion", "missing field 'completion'"),
        ({"messages": []}, "messages", "conversation must be a non-empty list of turns"),
        ({"messages": [{"role": "user"}]}, "messages", "turn 0 must have 'role' and 'content'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages", "turn 0 has unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": 1}]}, "messages", "turn 0 content must be a string"),
        ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}, "messages",
         "the last turn must be the assistant's answer"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "alien", "value": "a"}]}, "sharegpt",
         "turn 1 has unknown role 'alien'"),
        ({"conversations": [{"role": "user", "content": "q"}]}, "sharegpt",
         "turn 0 must have 'from' and 'value'"),
        ({"instruction": "q", "output": "a", "choices": "a,b"}, "auto", "field 'choices' must be a list"),
        ({"instruction": "q", "output": "a"}, "csv",
         "unknown format 'csv'; choose one of auto, alpaca, messages, sharegpt, prompt-completion"),
    ],
)
def test_bad_rows(row: dict[str, Any], fmt: str, message: str) -> None:
    with pytest.raises(RowError) as info:
        normalize_row(row, fmt)
    assert str(info.value) == message


def test_undetectable_format_lists_the_keys_and_the_options() -> None:
    with pytest.raises(RowError) as info:
        detect_format({"question": "q", "answer": "a"})
    assert str(info.value).startswith("cannot tell the row's format from its keys ['answer', 'question']; "
                                      "expected 'instruction'+'output' (alpaca)")


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"messages": [], "instruction": "", "output": ""}, "messages"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "", "output": "", "prompt": "", "completion": ""}, "alpaca"),
        ({"prompt": "", "completion": ""}, "prompt-completion"),
    ],
)
def test_detect_format(row: dict[str, Any], fmt: str) -> None:
    assert detect_format(row) == fmt


def test_record_answer_content_key_and_dict() -> None:
    record = InstructionRecord("r1", "src", [Message(U, "Hi  there"), Message(A, "first"),
                                             Message(U, "again"), Message(A, "last")], task="chat")
    assert record.answer == "last"
    same_but_spaced = InstructionRecord("r2", "other", [Message(U, " Hi there "), Message(A, "first"),
                                                        Message(U, "again"), Message(A, "last")])
    assert record.content_key() == same_but_spaced.content_key()
    swapped_roles = InstructionRecord("r3", "src", [Message(A, "Hi there"), Message(U, "first"),
                                                    Message(U, "again"), Message(A, "last")])
    assert record.content_key() != swapped_roles.content_key()
    assert InstructionRecord("r4", "s", [Message(U, "q")]).answer == ""
    assert record.to_dict() == {"id": "r1", "source": "src", "task": "chat", "label": None, "choices": None,
                                "metadata": {}, "messages": [{"role": "user", "content": "Hi  there"},
                                                             {"role": "assistant", "content": "first"},
                                                             {"role": "user", "content": "again"},
                                                             {"role": "assistant", "content": "last"}]}
