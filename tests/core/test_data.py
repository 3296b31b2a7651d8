"""The data half of a run: reading sources, transforms with counted drops, the train/eval split (seeded,
never leaking eval into training, capped), mixture weights, and encoding with the length policy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.renderers import AlpacaRenderer, ChatMLRenderer
from ift.data import DataReport, apply_transforms, data_notes, encode_records, read_sources, split_records, stop_strings
from ift.errors import DataError, PluginError
from ift.host import PluginHost
from ift.records import InstructionRecord, Message

MakeRecipe = Callable[..., Any]


def rec(source: str, i: int, question: str | None = None, answer: str = "a") -> InstructionRecord:
    return InstructionRecord(
        f"{source}-{i}", source, [Message("user", question or f"q{i}"), Message("assistant", answer)]
    )


def table(name: str, **extra: Any) -> dict[str, Any]:
    return {"source": "jsonl", "path": f"{name}.jsonl", "name": name, **extra}


# --- split -------------------------------------------------------------------------------------


def test_held_out_content_never_occurs_in_training(make_recipe: MakeRecipe) -> None:
    recipe = make_recipe([table("a"), table("b", split="train")], eval={"fraction": 0.2})
    a = [rec("a", i) for i in range(10)]
    b = [rec("b", i, question=f"  q{i} ") for i in range(10)]  # same content as a, other ids and spacing
    report = DataReport()
    train, held = split_records(recipe, a + b, report)
    assert len(held) == 2 and {r.source for r in held} == {"a"}
    held_keys = {r.content_key() for r in held}
    assert not [r.id for r in train if r.content_key() in held_keys]
    assert len(train) == 16
    assert report.split == {"train": 16, "eval": 2, "removed_overlapping_eval": 2}
    copies_of_held = {"b-" + r.id.split("-")[1] for r in held}
    assert {r.id for r in train} == {r.id for r in a + b} - {r.id for r in held} - copies_of_held


def test_split_is_seeded(make_recipe: MakeRecipe) -> None:
    records = [rec("a", i) for i in range(20)]

    def held_ids(seed: int) -> list[str]:
        recipe = make_recipe([table("a")], run={"seed": seed}, eval={"fraction": 0.25})
        return [r.id for r in split_records(recipe, list(records), DataReport())[1]]

    first = held_ids(1)
    assert len(first) == 5
    assert held_ids(1) == first
    assert held_ids(2) != first


def test_fraction_is_per_source_and_capped_proportionally(make_recipe: MakeRecipe) -> None:
    records = [rec("a", i) for i in range(10)] + [rec("b", i, question=f"b{i}") for i in range(20)]
    recipe = make_recipe([table("a"), table("b")], eval={"fraction": 0.1})
    _, held = split_records(recipe, records, DataReport())
    assert sorted(r.source for r in held) == ["a", "b", "b"]

    recipe = make_recipe([table("a"), table("b")], eval={"fraction": 0.5, "max_examples": 3})
    train, held = split_records(recipe, records, DataReport())
    assert sorted(r.source for r in held) == ["a", "b", "b"]
    assert len(train) == 27


def test_split_tables_and_tiny_sources(make_recipe: MakeRecipe) -> None:
    records = (
        [rec("t", i) for i in range(4)]
        + [rec("e", i, question=f"e{i}") for i in range(3)]
        + [rec("one", 0, question="only")]
    )
    recipe = make_recipe([table("t", split="train"), table("e", split="eval"), table("one")], eval={"fraction": 0.5})
    train, held = split_records(recipe, records, DataReport())
    assert sorted(r.id for r in held) == ["e-0", "e-1", "e-2"]
    assert sorted(r.id for r in train) == ["one-0", "t-0", "t-1", "t-2", "t-3"]


def test_zero_fraction_keeps_everything_for_training(make_recipe: MakeRecipe) -> None:
    records = [rec("a", i) for i in range(5)]
    recipe = make_recipe([table("a")], eval={"fraction": 0, "metrics": []})
    train, held = split_records(recipe, records, DataReport())
    assert (len(train), held) == (5, [])


def test_max_examples_caps_held_out_records_over_all_sources(make_recipe: MakeRecipe) -> None:
    records = (
        [rec("e1", i) for i in range(3)]
        + [rec("e2", i, question=f"x{i}") for i in range(3)]
        + [rec("t", i, question=f"t{i}") for i in range(3)]
    )
    recipe = make_recipe(
        [table("e1", split="eval"), table("e2", split="eval"), table("t", split="train")], eval={"max_examples": 4}
    )
    report = DataReport()
    _, held = split_records(recipe, records, report)
    assert len(held) <= 4
    # the cut records are neither trained nor evaluated on: counted in the manifest and said in the output
    assert report.split["cut_by_max_examples"] == {"e2": {"records": 3, "kept": 1, "max_examples": 4}}
    assert data_notes(report.to_dict()) == [
        "eval.max_examples = 4 kept 1 of the 3 records of eval table 'e2'; raise eval.max_examples (or set it to "
        "nothing) to keep them all"
    ]


def test_transforms_dropping_eval_records_say_so_per_split(make_recipe: MakeRecipe, host: PluginHost) -> None:
    records = [rec("t", 0), rec("e", 0, answer=" "), rec("e", 1)]
    records[0].metadata["split"] = "train"
    records[1].metadata["split"] = records[2].metadata["split"] = "eval"
    recipe = make_recipe([table("t", split="train"), table("e", split="eval")], transforms=[{"name": "drop-invalid"}])
    report = DataReport()
    apply_transforms(recipe, host, records, report)
    assert report.transforms[0]["by_split"] == {"eval": {"in": 2, "out": 1}, "train": {"in": 1, "out": 1}}
    assert data_notes(report.to_dict()) == [
        "transform 'drop-invalid' dropped 1 of 2 records of the eval table(s) (split = 'eval')"
    ]


# --- weights -----------------------------------------------------------------------------------


def test_weights_repeat_and_subsample_with_a_seed(make_recipe: MakeRecipe) -> None:
    records = (
        [rec("a", i) for i in range(4)]
        + [rec("b", i, question=f"b{i}") for i in range(6)]
        + [rec("c", i, question=f"c{i}") for i in range(4)]
    )
    recipe = make_recipe(
        [table("a", weight=2), table("b", weight=0.5), table("c", weight=1.5)], eval={"fraction": 0, "metrics": []}
    )
    report = DataReport()
    train, _ = split_records(recipe, records, report)
    assert report.split["weighted_train"] == {"a": 8, "b": 3, "c": 6}
    ids = [r.id for r in train]
    assert sorted(i for i in ids if i.startswith("a-")) == ["a-0", "a-0", "a-1", "a-1", "a-2", "a-2", "a-3", "a-3"]
    b_ids = [i for i in ids if i.startswith("b-")]
    assert len(set(b_ids)) == 3
    c_ids = [i for i in ids if i.startswith("c-")]
    assert set(c_ids) == {"c-0", "c-1", "c-2", "c-3"}
    again, _ = split_records(recipe, records, DataReport())
    assert [r.id for r in again] == ids


def test_unit_weights_leave_training_records_untouched(make_recipe: MakeRecipe) -> None:
    records = [rec("a", i) for i in range(3)]
    report = DataReport()
    recipe = make_recipe([table("a")], eval={"fraction": 0, "metrics": []})
    train, _ = split_records(recipe, records, report)
    assert train == records
    assert "weighted_train" not in report.split


# --- reading sources ---------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_read_sources_sets_task_split_and_reports_counts(
    make_recipe: MakeRecipe, host: PluginHost, tmp_path: Path
) -> None:
    _write_jsonl(
        tmp_path / "a.jsonl",
        [{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": "a2", "task": "own"}],
    )
    _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p", "completion": "c"}])
    recipe = make_recipe([table("a", task="math"), table("b", split="eval")])
    report = DataReport()
    records = read_sources(recipe, host, report)
    assert [(r.id, r.source, r.task, r.metadata["split"]) for r in records] == [
        ("a.jsonl:1", "a", "math", "auto"),
        ("a.jsonl:2", "a", "own", "auto"),
        ("b.jsonl:1", "b", None, "eval"),
    ]
    assert [(s["name"], s["source"], s["records"], s["weight"]) for s in report.sources] == [
        ("a", "jsonl", 2, 1.0),
        ("b", "jsonl", 1, 1.0),
    ]
    assert all(s["fingerprint"].startswith("sha256:") for s in report.sources)


class MemoryConfig(ift.ComponentConfig):
    ids: list[str] = Field(default_factory=list)
    wrong_source: bool = False


class MemorySource(ift.InstructionSource):
    name = "memory"
    Config = MemoryConfig
    config: MemoryConfig

    def records(self) -> list[InstructionRecord]:
        source = "elsewhere" if self.config.wrong_source else self.source_name
        return [
            InstructionRecord(i, source, [Message("user", "q"), Message("assistant", "a")]) for i in self.config.ids
        ]


class MemoryPlugin:
    @ift.hookimpl
    def ift_register_sources(self) -> list[type]:
        return [MemorySource]


def test_duplicate_ids_within_a_source_are_a_data_error(make_recipe: MakeRecipe, host: PluginHost) -> None:
    host.register(MemoryPlugin(), "memory-plugin")
    recipe = make_recipe([{"source": "memory", "name": "mem", "ids": ["x", "y", "x"]}])
    with pytest.raises(DataError) as info:
        read_sources(recipe, host, DataReport())
    assert str(info.value) == "source 'mem' has two records with id 'x'; ids must be unique within a source"


def test_source_returning_records_of_another_source_is_a_plugin_error(
    make_recipe: MakeRecipe, host: PluginHost
) -> None:
    host.register(MemoryPlugin(), "memory-plugin", distribution="ift-memory")
    recipe = make_recipe([{"source": "memory", "name": "mem", "ids": ["x"], "wrong_source": True}])
    with pytest.raises(PluginError) as info:
        read_sources(recipe, host, DataReport())
    assert str(info.value) == (
        "plugin 'memory-plugin' (from ift-memory): source 'memory' returned a record "
        "with source='elsewhere', expected 'mem'"
    )


# --- transforms --------------------------------------------------------------------------------


class SilentDrop(ift.Transform):
    name = "silent-drop"

    def apply(self, records: list[InstructionRecord], tally: ift.Tally) -> list[InstructionRecord]:
        return records[1:]


class SilentPlugin:
    @ift.hookimpl
    def ift_register_transforms(self) -> list[type]:
        return [SilentDrop]


def test_transform_dropping_without_counting_is_a_plugin_error(make_recipe: MakeRecipe, host: PluginHost) -> None:
    host.register(SilentPlugin(), "silent", distribution="ift-silent")
    recipe = make_recipe(transforms=[{"name": "silent-drop"}])
    with pytest.raises(PluginError) as info:
        apply_transforms(recipe, host, [rec("d", 0), rec("d", 1)], DataReport())
    assert str(info.value) == (
        "plugin 'silent' (from ift-silent): transform 'silent-drop' dropped 1 records "
        "but counted 0; every drop must be counted with tally.drop(reason)"
    )


def test_transforms_report_counts_by_reason(make_recipe: MakeRecipe, host: PluginHost) -> None:
    records = [rec("d", 0), rec("d", 1, question="q0"), rec("d", 2, answer=" "), rec("d", 3, question="x", answer="x")]
    recipe = make_recipe(transforms=[{"name": "drop-invalid"}, {"name": "dedup"}])
    report = DataReport()
    kept = apply_transforms(recipe, host, records, report)
    assert [r.id for r in kept] == ["d-0"]
    assert report.transforms == [
        {
            "name": "drop-invalid",
            "in": 4,
            "out": 2,
            "dropped": {"empty output": 1, "answer identical to prompt": 1},
            "changed": {},
            "by_split": {"auto": {"in": 4, "out": 2}},
        },
        {
            "name": "dedup",
            "in": 2,
            "out": 1,
            "dropped": {"duplicate": 1},
            "changed": {},
            "by_split": {"auto": {"in": 2, "out": 1}},
        },
    ]


# --- encoding ----------------------------------------------------------------------------------


@pytest.fixture
def adapter(tmp_path: Path) -> CausalLMAdapter:
    config = CausalLMAdapter.Config(tokenizer="byte-level", from_config={"model_type": "llama"})
    return CausalLMAdapter(config, base_dir=tmp_path)


def test_encode_records_applies_the_length_policy_and_counts(adapter: CausalLMAdapter, tmp_path: Path) -> None:
    tokenizer = adapter.load_tokenizer()
    renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tokenizer)
    short = rec("s", 0, question="hi", answer="yo")  # 25 tokens, 3 trainable ("yo<|im_end|>")
    long_prompt = rec("s", 1, question="x" * 40, answer="yo")  # the answer falls after token 40
    records = [short, long_prompt]
    report = DataReport()
    examples, kept = encode_records(
        records, renderer, adapter, tokenizer, ift.TrainerConfig(max_length=40, overlong="truncate"), "train", report
    )
    assert kept == [short]
    assert [e.record_id for e in examples] == ["s-0"]
    assert report.encoding["train"] == {
        "in": 2,
        "out": 1,
        "reasons": {"no trainable tokens left after truncation": 1},
        "tokens": 25,
        "trainable_tokens": 3,
    }

    examples, _ = encode_records(
        records, renderer, adapter, tokenizer, ift.TrainerConfig(max_length=25, overlong="drop"), "eval", report
    )
    assert [e.record_id for e in examples] == ["s-0"]
    assert report.encoding["eval"]["reasons"] == {"longer than max_length": 1}


def test_encode_records_drops_examples_without_trainable_tokens(adapter: CausalLMAdapter) -> None:
    class PromptOnly(ift.Renderer):
        name = "prompt-only"

        def render(self, record: InstructionRecord) -> list[ift.Segment]:
            return [ift.Segment(record.messages[0].content, False)]

        def template_hash(self) -> str:
            return ""

    tokenizer = adapter.load_tokenizer()
    report = DataReport()
    renderer = PromptOnly(ift.ComponentConfig(), base_dir=Path("."))
    examples, _ = encode_records([rec("s", 0)], renderer, adapter, tokenizer, ift.TrainerConfig(), "train", report)
    assert examples == []
    assert report.encoding["train"]["reasons"] == {"no trainable tokens": 1}


def test_stop_strings_are_what_follows_the_answer(tokenizer: Any, tmp_path: Path) -> None:
    record = rec("s", 0, answer="yes")
    alpaca = AlpacaRenderer(AlpacaRenderer.Config(), base_dir=tmp_path)
    alpaca.bind(tokenizer)
    chatml = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=tmp_path)
    assert stop_strings(alpaca, record) == ["<|endoftext|>"]
    assert stop_strings(chatml, record) == ["<|im_end|>"]
    unbound = AlpacaRenderer(AlpacaRenderer.Config(), base_dir=tmp_path)  # no EOS known: nothing to stop at
    assert stop_strings(unbound, record) == []
