"""Normalising alpaca / messages / sharegpt / prompt-completion / classification rows into InstructionRecords."""

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
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    assert pairs(normalize_row(row)[0]) == [(S, "Be brief."), (U, "Hi"), (A, "Hello")]


def test_sharegpt_roles_are_mapped() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "q1"},
            {"from": "gpt", "value": "a1"},
            {"from": "Human", "value": "q2"},
            {"from": "bot", "value": "a2"},
        ]
    }
    assert pairs(normalize_row(row)[0]) == [(S, "sys"), (U, "q1"), (A, "a1"), (U, "q2"), (A, "a2")]


def test_prompt_completion() -> None:
    messages, _ = normalize_row({"prompt": "2+2=", "completion": "4"})
    assert pairs(messages) == [(U, "2+2="), (A, "4")]


def test_system_prompt_is_added_only_when_missing() -> None:
    messages, _ = normalize_row({"prompt": "p", "completion": "c"}, system="You are terse.")
    assert pairs(messages) == [(S, "You are terse."), (U, "p"), (A, "c")]
    row = {
        "messages": [
            {"role": "system", "content": "own"},
            {"role": "user", "content": "p"},
            {"role": "assistant", "content": "c"},
        ]
    }
    assert pairs(normalize_row(row, system="You are terse.")[0]) == [(S, "own"), (U, "p"), (A, "c")]


def test_extras_label_task_choices_metadata() -> None:
    row = {
        "instruction": "Sentiment?",
        "output": "positive",
        "label": "positive",
        "task": 7,
        "choices": ["positive", "negative", 3],
        "metadata": {"lang": "en"},
    }
    _, extras = normalize_row(row)
    assert extras == {
        "label": "positive",
        "task": "7",
        "choices": ["positive", "negative", "3"],
        "metadata": {"lang": "en"},
    }


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
        (
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            "messages",
            "the last turn must be the assistant's answer",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "alien", "value": "a"}]},
            "sharegpt",
            "turn 1 has unknown role 'alien'",
        ),
        ({"conversations": [{"role": "user", "content": "q"}]}, "sharegpt", "turn 0 must have 'from' and 'value'"),
        ({"instruction": "q", "output": "a", "choices": "a,b"}, "auto", "field 'choices' must be a list"),
        (
            {"instruction": "q", "output": "a"},
            "csv",
            "unknown format 'csv'; choose one of auto, alpaca, messages, sharegpt, prompt-completion, classification, "
            "preference",
        ),
        ({"label": "refund"}, "auto", "missing field 'text' (or 'instruction') of a classification row"),
        ({"text": "money back"}, "classification", "missing field 'label'"),
        (
            {"text": "money back", "label": 1.5},
            "classification",
            "field 'label' must be a string or an integer, got float",
        ),
        ({"text": "money back", "label": True}, "auto", "field 'label' must be a string or an integer, got bool"),
        ({"text": "money back", "label": ["refund"]}, "auto", "field 'label' must be a string or an integer, got list"),
        ({"text": "money back", "label": "  "}, "auto", "field 'label' is empty"),
        ({"text": " \n", "label": "refund"}, "auto", "the text to classify is empty"),
        ({"text": 42, "label": "refund"}, "auto", "field 'text' must be a string, got int"),
        (
            {"text": "a", "instruction": "b", "label": "refund"},
            "auto",
            "a classification row has either 'text' or 'instruction' (+ 'input'), not both",
        ),
    ],
)
def test_bad_rows(row: dict[str, Any], fmt: str, message: str) -> None:
    with pytest.raises(RowError) as info:
        normalize_row(row, fmt)
    assert str(info.value) == message


def test_undetectable_format_lists_the_keys_and_the_options() -> None:
    with pytest.raises(RowError) as info:
        detect_format({"question": "q", "answer": "a"})
    assert str(info.value).startswith(
        "cannot tell the row's format from its keys ['answer', 'question']; expected 'instruction'+'output' (alpaca)"
    )


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"messages": [], "instruction": "", "output": ""}, "messages"),
        ({"conversations": []}, "sharegpt"),
        ({"instruction": "", "output": "", "prompt": "", "completion": ""}, "alpaca"),
        ({"prompt": "", "completion": ""}, "prompt-completion"),
        ({"text": "t", "label": "x"}, "classification"),
        ({"instruction": "i", "label": "x"}, "classification"),
        ({"instruction": "i", "output": "o", "label": "x"}, "alpaca"),  # an answer of its own: label is extra
        ({"prompt": "p", "label": "x"}, "prompt-completion"),
        ({"messages": [], "label": "x"}, "messages"),
    ],
)
def test_detect_format(row: dict[str, Any], fmt: str) -> None:
    assert detect_format(row) == fmt


def test_record_answer_content_key_and_dict() -> None:
    record = InstructionRecord(
        "r1",
        "src",
        [Message(U, "Hi  there"), Message(A, "first"), Message(U, "again"), Message(A, "last")],
        task="chat",
    )
    assert record.answer == "last"
    same_but_spaced = InstructionRecord(
        "r2", "other", [Message(U, " Hi there "), Message(A, "first"), Message(U, "again"), Message(A, "last")]
    )
    assert record.content_key() == same_but_spaced.content_key()
    swapped_roles = InstructionRecord(
        "r3", "src", [Message(A, "Hi there"), Message(U, "first"), Message(U, "again"), Message(A, "last")]
    )
    assert record.content_key() != swapped_roles.content_key()
    assert InstructionRecord("r4", "s", [Message(U, "q")]).answer == ""
    assert record.to_dict() == {
        "id": "r1",
        "source": "src",
        "task": "chat",
        "label": None,
        "choices": None,
        "metadata": {},
        "messages": [
            {"role": "user", "content": "Hi  there"},
            {"role": "assistant", "content": "first"},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "last"},
        ],
    }


def test_classification_text_and_label() -> None:
    messages, extras = normalize_row({"text": "Where is my parcel?", "label": " track_order ", "task": "intent"})
    assert pairs(messages) == [(U, "Where is my parcel?"), (A, "track_order")]
    assert extras == {"label": "track_order", "task": "intent"}  # stripped, and also the answer


def test_classification_instruction_input_and_integer_label() -> None:
    row = {"instruction": "Is this review positive?", "input": "Great kettle.", "label": 1}
    messages, extras = normalize_row(row)
    assert pairs(messages) == [(U, "Is this review positive?\n\nGreat kettle."), (A, "1")]
    assert extras == {"label": "1"}
    messages, _ = normalize_row({"instruction": "Classify.", "input": " ", "label": 0}, "classification")
    assert pairs(messages) == [(U, "Classify."), (A, "0")]


def test_classification_with_a_system_prompt() -> None:
    messages, _ = normalize_row({"text": "hi", "label": "greeting"}, system="Classify the intent.")
    assert pairs(messages) == [(S, "Classify the intent."), (U, "hi"), (A, "greeting")]


def test_classification_rows_through_a_jsonl_source(tmp_path: Any) -> None:
    """A file source turns classification rows into records with their label, and a bad row into an error
    naming file and line."""
    import json

    from ift.builtin_plugins.sources import JsonlSource
    from ift.errors import DataError

    path = tmp_path / "intents.jsonl"
    path.write_text(
        json.dumps({"text": "cancel it", "label": "cancel_order"})
        + "\n"
        + json.dumps({"text": "refund please", "label": "refund"})
        + "\n"
    )
    source = JsonlSource(JsonlSource.Config(path=str(path)), source_name="intents", base_dir=tmp_path)
    records = list(source.records())
    assert [(r.label, r.answer, r.messages[0].content) for r in records] == [
        ("cancel_order", "cancel_order", "cancel it"),
        ("refund", "refund", "refund please"),
    ]
    path.write_text(json.dumps({"text": "ok", "label": "a"}) + "\n" + json.dumps({"text": "x", "label": {}}) + "\n")
    bad = JsonlSource(
        JsonlSource.Config(path=str(path), format="classification"), source_name="intents", base_dir=tmp_path
    )
    with pytest.raises(DataError) as info:
        list(bad.records())
    assert str(info.value) == f"{path}:2: field 'label' must be a string or an integer, got dict"
