"""Preference records through the data half of a run: the row shapes TRL, UltraFeedback and KTO datasets ship,
file sources with field mapping, dedup and cleaning that treat a pair as one record, a split that keeps every
pair of a prompt on one side, rendering (prompt untrained and identical, completion trained), encoding with
the length policy, and the prepared-data table and cache."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.cleaning.filters import LengthFilter
from ift.builtin_plugins.cleaning.neardup import NearDedup
from ift.builtin_plugins.cleaning.pii import MaskPII
from ift.builtin_plugins.renderers import ChatMLRenderer
from ift.builtin_plugins.sources import CsvSource, JsonlSource
from ift.builtin_plugins.transforms import DropInvalid, ExactDedup
from ift.cache import Prepared, PreparedCache
from ift.data import DataReport, encode_records, split_records
from ift.examples import write_table
from ift.records import InstructionRecord, Message, RowError, normalize_row

from .helpers import adapter, records

U, A = "user", "assistant"


def turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in pairs]


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},  # TRL standard
        {"prompt": turns((U, "Hi?")), "chosen": turns((A, "Hello.")), "rejected": turns((A, "Go away."))},  # TRL chat
        {
            "prompt": "Hi?",
            "chosen": turns((U, "Hi?"), (A, "Hello.")),  # UltraFeedback: whole conversations
            "rejected": turns((U, "Hi?"), (A, "Go away.")),
        },
        {"chosen": turns((U, "Hi?"), (A, "Hello.")), "rejected": turns((U, "Hi?"), (A, "Go away."))},  # implicit prompt
        {"messages": turns((U, "Hi?"), (A, "Hello.")), "rejected": {"role": A, "content": "Go away."}},  # as ift writes
    ],
)
def test_pair_rows_of_every_shape_become_the_same_record(row: dict[str, Any]) -> None:
    messages, extras = normalize_row(row)
    assert [(m.role, m.content) for m in messages] == [(U, "Hi?"), (A, "Hello.")]
    assert extras == {"rejected": Message(A, "Go away.")}
    record = InstructionRecord("1", "s", messages, **extras)
    assert record.preference == "pair" and record.answer == "Hello."
    assert InstructionRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@pytest.mark.parametrize(("label", "desirable"), [(True, True), (False, False), ("false", False), ("True", True)])
def test_unpaired_rows_carry_their_judgement(label: Any, desirable: bool) -> None:
    messages, extras = normalize_row({"prompt": "Hi?", "completion": "Hello.", "label": label})
    assert messages[-1].content == "Hello." and extras == {"desirable": desirable}
    assert "label" not in extras


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Hi?", "chosen": "Hello."}, "has 'chosen' but no 'rejected'"),
        ({"prompt": "Hi?", "completion": "x", "label": "maybe"}, "must be true or false"),
        ({"prompt": "Hi?", "chosen": turns((A, "a"), (A, "b")), "rejected": "c"}, "one assistant answer"),
        ({"prompt": turns((U, "q"), (A, "a")), "chosen": "x", "rejected": "y"}, "must not end with an assistant turn"),
    ],
)
def test_bad_preference_rows_are_named(row: dict[str, Any], message: str) -> None:
    with pytest.raises(RowError, match=message):
        normalize_row(row, "preference" if "label" in row else "auto")


def test_file_sources_read_pairs_through_the_field_mapping(tmp_path: Path) -> None:
    with (tmp_path / "p.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "good", "bad"])
        writer.writerow(["Capital of France?", "Paris.", "Lyon."])
    source = CsvSource(
        CsvSource.Config(
            path="p.csv", format="preference", fields={"prompt": "question", "chosen": "good", "rejected": "bad"}
        ),
        source_name="prefs",
        base_dir=tmp_path,
    )
    (record,) = list(source.records())
    assert record.answer == "Paris." and record.rejected == Message(A, "Lyon.")
    (tmp_path / "k.jsonl").write_text(json.dumps({"meta": {"q": "2+2?"}, "completion": "5", "label": False}) + "\n")
    kto = JsonlSource(
        JsonlSource.Config(path="k.jsonl", fields={"prompt": "meta.q"}), source_name="k", base_dir=tmp_path
    )
    (record,) = list(kto.records())
    assert record.preference == "unpaired" and record.desirable is False and record.messages[0].content == "2+2?"


def pair(i: int, prompt: str, chosen: str, rejected: str, source: str = "prefs") -> InstructionRecord:
    return InstructionRecord(str(i), source, [Message(U, prompt), Message(A, chosen)], rejected=Message(A, rejected))


def test_dedup_treats_a_pair_as_one_record() -> None:
    rows = [pair(0, "Q", "good", "bad"), pair(1, "Q", "good", "worse"), pair(2, " q", "GOOD ", "bad")]
    tally = ift.Tally()
    kept = ExactDedup(ExactDedup.Config()).apply(rows, tally)
    assert [r.id for r in kept] == ["0", "1"]  # another rejected answer is another pair; spacing and case are not
    assert tally.dropped == {"duplicate": 1}
    assert [r.id for r in ExactDedup(ExactDedup.Config(by="prompt")).apply(rows, ift.Tally())] == ["0"]
    # near-dedup compares prompt + chosen: the two pairs that share them are near-duplicates
    near = NearDedup(NearDedup.Config(threshold=0.9)).apply(
        [
            pair(0, "Name a large red fruit please", "A big red apple", "no"),
            pair(1, "Name a large red fruit please", "A big red apple", "a plum"),
            pair(2, "Name a large red fruit please", "A watermelon", "no"),
        ],
        ift.Tally(),
    )
    assert [r.id for r in near] == ["0", "2"]


def test_cleaning_looks_at_the_prompt_and_both_answers() -> None:
    rows = [
        pair(0, "Q", "same", "same"),
        pair(1, "Q", "a", " "),
        pair(2, "Q", "Shout", "shout"),
        pair(3, "Q", "short", "a much much longer rejected answer"),
    ]
    tally = ift.Tally()
    kept = DropInvalid(DropInvalid.Config()).apply(rows, tally)
    assert [r.id for r in kept] == ["2", "3"]  # case can be the preference
    assert tally.dropped == {"chosen identical to rejected": 1, "empty rejected": 1}
    tally = ift.Tally()
    assert LengthFilter(LengthFilter.Config(max_answer=3)).apply(kept, tally) == [kept[0]]
    assert tally.dropped == {"answer too long": 1}
    (masked,) = MaskPII(MaskPII.Config()).apply([pair(0, "Q", "ok", "mail me at ann@example.com")], ift.Tally())
    assert "ann@example.com" not in masked.rejected.content  # type: ignore[union-attr]


def test_the_split_keeps_every_pair_of_a_prompt_on_one_side(make_recipe: Callable[..., Any]) -> None:
    rows = [pair(i * 3 + k, f"prompt {i}", f"good {k}", f"bad {k}") for i in range(10) for k in range(3)]
    rows.append(
        InstructionRecord("x", "prefs", [Message(U, "prompt 0"), Message(A, "good 9")], rejected=Message(A, "bad 9"))
    )  # an eval-side prompt given again later
    recipe = make_recipe([{"source": "jsonl", "path": "p.jsonl", "name": "prefs"}], eval={"fraction": 0.2})
    report = DataReport()
    train, held = split_records(recipe, list(rows), report)
    held_prompts = {r.messages[0].content for r in held}
    assert not held_prompts & {r.messages[0].content for r in train}
    assert len(held) % 3 == 0 and 3 <= len(held) <= 9  # whole prompts, about a fifth of the pairs
    assert len(train) + len(held) + report.split.get("removed_sharing_eval_prompt", 0) == len(rows)
    again = split_records(recipe, list(rows), DataReport())
    assert [r.id for r in again[1]] == [r.id for r in held]  # seeded


def test_rendering_and_encoding_train_only_the_completions(tmp_path: Path) -> None:
    made, tokenizer = adapter(tmp_path)
    renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tokenizer)
    record = InstructionRecord(
        "1",
        "s",
        [Message(U, "Hi?"), Message(A, "Earlier."), Message(U, "And now?"), Message(A, "Yes.")],
        rejected=Message(A, "No!"),
    )
    chosen, rejected = renderer.render_completions(record)
    assert [s.text for s in chosen if s.trainable] == ["Yes.<|im_end|>"]  # the earlier answer is prompt here
    assert [s.text for s in rejected if s.trainable] == ["No!<|im_end|>"]
    assert chosen[0].text == rejected[0].text and "Earlier." in chosen[0].text
    (example,) = encode_records(
        [record], renderer, made, tokenizer, ift.TrainerConfig(max_length=256), "train", report := DataReport()
    )[0]
    assert example.kind == "pair"
    start = next(i for i, label in enumerate(example.labels) if label != -100)
    assert example.input_ids[:start] == example.rejected_ids[:start]  # type: ignore[index]
    assert (
        tokenizer.decode(
            [t for t, lab in zip(example.rejected_ids, example.rejected_labels, strict=True) if lab != -100]
        )
        == "No!<|im_end|>"
    )
    assert report.encoding["train"]["trainable_tokens"] == example.trainable_tokens + example.rejected_trainable_tokens


def test_length_policy_keeps_a_pair_whole_or_not_at_all(tmp_path: Path) -> None:
    made, tokenizer = adapter(tmp_path)
    renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tokenizer)
    recs = [pair(0, "Q", "short", "x" * 80), pair(1, "Q", "short", "no")]
    report = DataReport()
    kept, kept_records = encode_records(
        recs, renderer, made, tokenizer, ift.TrainerConfig(max_length=60, overlong="drop"), "train", report
    )
    assert [r.id for r in kept_records] == ["1"] and report.encoding["train"]["reasons"] == {
        "longer than max_length": 1
    }
    cut, _ = encode_records(recs, renderer, made, tokenizer, ift.TrainerConfig(max_length=60), "train", DataReport())
    assert len(cut) == 2 and cut[0].truncated and len(cut[0].rejected_ids) == 60  # type: ignore[arg-type]


def test_the_table_and_the_cache_hold_pairs_and_unpaired_examples(tmp_path: Path) -> None:
    made, tokenizer = adapter(tmp_path)
    renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tokenizer)
    recs = [
        *records(
            [
                {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Bye."},
                {"prompt": "Hi?", "completion": "Meh.", "label": False},
            ]
        ),
        InstructionRecord("sft", "prefs", [Message(U, "Q"), Message(A, "A")]),
    ]
    examples, kept = encode_records(recs, renderer, made, tokenizer, ift.TrainerConfig(), "train", DataReport())
    table = write_table(examples, tmp_path / "t")
    assert table.kinds() == ["pair", "undesirable", "sequence"]
    assert [e.rejected_ids for e in table] == [e.rejected_ids for e in examples]
    assert table[1].desirable is False and table[2].desirable is None
    cache = PreparedCache(tmp_path / "cache")
    cache.store("k", Prepared(examples, examples, kept, {}))
    hit = cache.load("k")
    assert hit is not None and list(hit.eval) == list(table) and hit.eval_records == kept


def test_the_models_chat_template_renders_both_completions(tmp_path: Path) -> None:
    from ift.builtin_plugins.renderers import ChatTemplateRenderer

    _, tokenizer = adapter(tmp_path)
    renderer = ChatTemplateRenderer(ChatTemplateRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tokenizer)
    record = InstructionRecord(
        "1",
        "s",
        [Message("system", "Be brief."), Message(U, "Hi"), Message(A, "Hello"), Message(U, "Bye")],
        rejected=Message(A, "Whatever"),
    )
    record.messages.append(Message(A, "See you"))
    for segments, answer in zip(renderer.render_completions(record), ("See you", "Whatever"), strict=True):
        conversation = [m.to_dict() for m in record.prompt_messages] + [{"role": A, "content": answer}]
        assert "".join(s.text for s in segments) == tokenizer.apply_chat_template(conversation, tokenize=False)
        assert [s.text for s in segments if s.trainable] == [f"{answer}<|im_end|>"]


def test_preview_shows_both_completions(
    make_recipe: Callable[..., Any], host: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ift.previewing import preview

    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Bye."}) + "\n")
    recipe = make_recipe(template={"name": "chatml"}, eval={"fraction": 0, "metrics": []})
    (entry,) = preview(recipe, host, 1, color=False)
    assert [text for text, trained in entry["segments"] if trained] == ["Hello.<|im_end|>"]
    assert [text for text, trained in entry["rejected_segments"] if trained] == ["Bye.<|im_end|>"]
    assert "[chosen]" in capsys.readouterr().out
