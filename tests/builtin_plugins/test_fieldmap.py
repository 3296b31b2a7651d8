"""Field mapping on file sources: nested paths, one record per list element, stable ids, named mistakes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins.sources import JsonlSource, JsonSource
from ift.errors import RecipeError
from ift.host import PluginHost
from ift.recipe import validate_recipe

SEEDS = Path(__file__).resolve().parents[1] / "data" / "self_instruct_seed_tasks.jsonl"
SELF_INSTRUCT = {
    "explode": "instances",
    "fields": {"input": "instances.input", "output": "instances.output", "task": "name"},
}


def read(cls: type, folder: Path, name: str, **config: object) -> list[ift.InstructionRecord]:
    return list(cls(cls.Config.model_validate({"path": name, **config}), source_name="s", base_dir=folder).records())


def test_self_instruct_tasks_become_one_record_per_instance(tmp_path: Path) -> None:
    shutil.copy(SEEDS, tmp_path / "seeds.jsonl")
    records = read(JsonlSource, tmp_path, "seeds.jsonl", **SELF_INSTRUCT)
    assert [r.id for r in records] == [
        "seed_task_0#0",
        "seed_task_1#0",
        "seed_task_2#0",
        "seed_task_3#0",
        "seed_task_3#1",
        "seed_task_3#2",
    ]
    sentiment = records[4]
    assert [(m.role, m.content) for m in sentiment.messages] == [
        ("user", "Classify the sentiment of the sentence into positive or negative.\n\nThe soup was cold."),
        ("assistant", "negative"),
    ]
    assert sentiment.task == "sentiment_pairs"
    assert sentiment.metadata == {"row": 3, "line": 4, "element": 1}
    assert records[0].messages[0].content.startswith("Is there anything")  # empty input: instruction only


def test_dotted_paths_reach_into_nested_objects(tmp_path: Path) -> None:
    rows = [{"meta": {"uid": "q-1"}, "q": {"text": "Add 2 and 2."}, "a": {"text": "4"}}]
    (tmp_path / "n.json").write_text(json.dumps(rows))
    [record] = read(
        JsonSource, tmp_path, "n.json", fields={"instruction": "q.text", "output": "a.text", "id": "meta.uid"}
    )
    assert (record.id, record.messages[0].content, record.answer) == ("q-1", "Add 2 and 2.", "4")


def test_exploded_ids_without_an_id_field_use_the_line(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("\n" + json.dumps({"q": "Say hi", "answers": ["hi", "hello"]}) + "\n")
    records = read(
        JsonlSource, tmp_path, "t.jsonl", explode="answers", fields={"instruction": "q", "output": "answers"}
    )
    assert [(r.id, r.answer) for r in records] == [("t.jsonl:2#0", "hi"), ("t.jsonl:2#1", "hello")]


def test_a_missing_mapped_field_names_the_path_and_the_line(tmp_path: Path) -> None:
    shutil.copy(SEEDS, tmp_path / "seeds.jsonl")
    with pytest.raises(ift.DataError) as info:
        read(JsonlSource, tmp_path, "seeds.jsonl", explode="instances", fields={"output": "instances.answer"})
    assert str(info.value).startswith(
        f"{tmp_path / 'seeds.jsonl'}:1: instances[0]: no field at 'instances.answer' (fields.output)"
    )


def test_empty_lists_are_counted_not_silently_lost(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text(json.dumps({"instruction": "x", "instances": []}) + "\n")
    src = JsonlSource(
        JsonlSource.Config.model_validate({"path": "t.jsonl", **SELF_INSTRUCT}), source_name="s", base_dir=tmp_path
    )
    assert list(src.records()) == []
    assert src.stats == {"rows_with_empty_list": 1}


def test_unknown_mapping_keys_get_did_you_mean_and_the_valid_keys(host: PluginHost) -> None:
    raw = {
        "data": [{"source": "jsonl", "path": "a.jsonl", "fields": {"instructions": "q"}}],
        "model": {"adapter": "causal-lm", "name_or_path": "x"},
    }
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw, host, base_dir=Path("."))
    message = str(info.value)
    assert (
        "data[0].fields: unknown mapping key 'instructions' (did you mean 'instruction'?); the keys are "
        "instruction, input, output, prompt, completion, chosen, rejected, text, label, choices, messages, conversations, "
        "system, task, id, metadata" in message
    )


def test_csv_ids_are_the_real_line_when_fields_span_lines(tmp_path: Path) -> None:
    from ift.builtin_plugins.sources import CsvSource

    (tmp_path / "t.csv").write_text('instruction,output\n"two\nlines",a\n\nnext,b\n')
    records = read(CsvSource, tmp_path, "t.csv")
    assert [r.id for r in records] == ["t.csv:2", "t.csv:5"]


def test_self_instruct_seed_file_reads_through_a_nested_source_table() -> None:
    from ift.builtin_plugins.builders.nested import nested_table

    table = nested_table({"path": str(SEEDS), **SELF_INSTRUCT})
    assert table["source"] == "jsonl" and table["explode"] == "instances"
    with pytest.raises(ValueError, match="unknown mapping key 'outptu' \\(did you mean 'output'\\?\\)"):
        nested_table({"path": str(SEEDS), "fields": {"outptu": "x"}})
