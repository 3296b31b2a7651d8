"""File sources (JSONL, JSON, CSV, Parquet): records, ids, options, and errors that name file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.sources import (
    CsvSource,
    FileSource,
    HubSource,
    JsonlSource,
    JsonSource,
    ParquetSource,
)

ALPACA = [
    {"instruction": "Add 2 and 2.", "output": "4"},
    {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
]


def source(cls: type[FileSource], folder: Path, path: str, **options: Any) -> FileSource:
    return cls(cls.Config(path=path, **options), source_name="src", base_dir=folder)


def conversation(record: ift.InstructionRecord) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in record.messages]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_jsonl_rows_become_records_with_stable_ids(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [*ALPACA, {"instruction": "Hi", "output": "Hello", "id": "own-7"}])
    records = list(source(JsonlSource, tmp_path, "train.jsonl").records())
    assert [r.id for r in records] == ["train.jsonl:1", "train.jsonl:2", "own-7"]  # file:line, 1-based
    assert {r.source for r in records} == {"src"}
    assert [conversation(r) for r in records] == [
        [("user", "Add 2 and 2."), ("assistant", "4")],
        [("user", "Translate.\n\nbonjour"), ("assistant", "hello")],
        [("user", "Hi"), ("assistant", "Hello")],
    ]
    assert [r.metadata["row"] for r in records] == [0, 1, 2]


def test_jsonl_options_format_system_limit(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "chat.jsonl",
        [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]} for i in range(3)],
    )
    src = source(JsonlSource, tmp_path, "chat.jsonl", format="sharegpt", system="Be kind.", limit=2)
    records = list(src.records())
    assert [conversation(r) for r in records] == [
        [("system", "Be kind."), ("user", "q0"), ("assistant", "a0")],
        [("system", "Be kind."), ("user", "q1"), ("assistant", "a1")],
    ]


def test_jsonl_extras_become_record_fields(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "cls.jsonl",
        [
            {
                "prompt": "Sentiment: great",
                "completion": "positive",
                "label": "positive",
                "choices": ["positive", "negative"],
                "task": "sentiment",
                "metadata": {"lang": "en"},
            }
        ],
    )
    [record] = source(JsonlSource, tmp_path, "cls.jsonl").records()
    assert (record.label, record.choices, record.task) == ("positive", ["positive", "negative"], "sentiment")
    assert record.metadata == {"row": 0, "line": 1, "lang": "en"}


def test_jsonl_broken_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(
        '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n'
        '{"instruction": "e", "output": \n{"instruction": "f", "output": "g"}\n'
    )
    with pytest.raises(ift.DataError) as info:
        list(source(JsonlSource, tmp_path, "broken.jsonl").records())
    message = str(info.value)
    assert message.startswith(f"{path}:3: invalid JSON: ")
    assert "broken.jsonl:3:" in message
    assert (info.value.file, info.value.line) == (str(path), 3)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n[1, 2]\n')
    with pytest.raises(ift.DataError) as info:
        list(source(JsonlSource, tmp_path, "list.jsonl").records())
    assert str(info.value) == f"{path}:2: expected a JSON object, got list"


def test_jsonl_row_missing_output_names_its_line_across_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "missing.jsonl"
    path.write_text(
        '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n{"instruction": "e"}\n'
    )
    with pytest.raises(ift.DataError) as info:
        list(source(JsonlSource, tmp_path, "missing.jsonl").records())
    assert str(info.value) == f"{path}:4: missing field 'output'"


def test_jsonl_mixing_formats_is_detected_row_by_row(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"instruction": "q1", "output": "a1"},
            {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
        ],
    )
    records = list(source(JsonlSource, tmp_path, "mixed.jsonl").records())
    assert [conversation(r) for r in records] == [
        [("user", "q1"), ("assistant", "a1")],
        [("user", "q2"), ("assistant", "a2")],
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ift.DataError) as info:
        source(JsonlSource, tmp_path, "absent.jsonl").records()
    assert str(info.value) == f"{tmp_path / 'absent.jsonl'}: data file not found (source 'src')"


def test_json_array(tmp_path: Path) -> None:
    (tmp_path / "rows.json").write_text(json.dumps(ALPACA, indent=2))
    records = list(source(JsonSource, tmp_path, "rows.json").records())
    assert [r.id for r in records] == ["rows.json[0]", "rows.json[1]"]  # no lines: the row index
    assert [conversation(r) for r in records] == [
        [("user", "Add 2 and 2."), ("assistant", "4")],
        [("user", "Translate.\n\nbonjour"), ("assistant", "hello")],
    ]


def test_json_syntax_error_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(ift.DataError) as info:
        list(source(JsonSource, tmp_path, "bad.json").records())
    assert str(info.value).startswith(f"{path}:3: invalid JSON: Expecting ',' delimiter")


def test_json_row_error_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 5}]))
    with pytest.raises(ift.DataError) as info:
        list(source(JsonSource, tmp_path, "rows.json").records())
    assert str(info.value) == f"{path}: row [1] (0-based, as in its id): field 'output' must be a string, got int"


def test_json_object_with_a_list_under_field(tmp_path: Path) -> None:
    (tmp_path / "wrapped.json").write_text(json.dumps({"rows": ALPACA}))
    records = list(source(JsonSource, tmp_path, "wrapped.json", field="rows").records())
    assert len(records) == 2


def test_csv_keeps_numbers_as_text_and_empty_input(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        'instruction,input,output\n"Add 2 and 2.",,4\nTranslate.,bonjour,hello\n"Say ""hi""",,"hi, you"\n'
    )
    records = list(source(CsvSource, tmp_path, "t.csv").records())
    assert [conversation(r) for r in records] == [
        [("user", "Add 2 and 2."), ("assistant", "4")],
        [("user", "Translate.\n\nbonjour"), ("assistant", "hello")],
        [("user", 'Say "hi"'), ("assistant", "hi, you")],
    ]
    assert [r.id for r in records] == ["t.csv:2", "t.csv:3", "t.csv:4"]  # the header is line 1


def test_csv_error_names_the_line_after_the_header(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("prompt,completion\np1,c1\np2,\n")
    with pytest.raises(ift.DataError) as info:
        list(source(CsvSource, tmp_path, "t.csv").records())
    assert str(info.value) == f"{path}:3: missing field 'completion'"


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "completion": "c"}]), tmp_path / "t.parquet")
    [record] = source(ParquetSource, tmp_path, "t.parquet").records()
    assert conversation(record) == [("user", "p"), ("assistant", "c")]


def test_fingerprint_follows_the_file_content(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", ALPACA)
    src = source(JsonlSource, tmp_path, "a.jsonl")
    first = src.fingerprint()
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 16
    assert src.fingerprint() == first
    write_jsonl(tmp_path / "a.jsonl", ALPACA[:1])
    assert src.fingerprint() != first


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path: Path) -> None:
    assert source(JsonlSource, tmp_path, "data/x.jsonl").path == tmp_path / "data" / "x.jsonl"
    assert source(JsonlSource, tmp_path, "/abs/x.jsonl").path == Path("/abs/x.jsonl")


# --- Hugging Face datasets (a local dataset folder: no network) -------------------------------


def hub(folder: Path, **options: Any) -> HubSource:
    return HubSource(HubSource.Config(dataset=str(folder), **options), source_name="hub", base_dir=folder)


def test_hub_source_reads_a_local_dataset_folder(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ALPACA)
    records = list(hub(tmp_path, limit=5).records())
    assert [r.id for r in records] == [f"{tmp_path}:train[0]", f"{tmp_path}:train[1]"]
    assert conversation(records[1]) == [("user", "Translate.\n\nbonjour"), ("assistant", "hello")]
    assert hub(tmp_path).fingerprint().startswith(f"{tmp_path}@default:")


def test_hub_source_row_error_names_dataset_and_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [ALPACA[0], {"instruction": "no answer"}])
    with pytest.raises(ift.DataError) as info:
        list(hub(tmp_path).records())
    assert str(info.value) == f"dataset {str(tmp_path)!r} split 'train' row [1] (0-based): missing field 'output'"


def test_hub_source_null_ids_fall_back_to_generated_ids(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{**ALPACA[0], "id": "x1"}, ALPACA[1], ALPACA[1]])
    assert [r.id for r in hub(tmp_path).records()] == ["x1", f"{tmp_path}:train[1]", f"{tmp_path}:train[2]"]


def test_an_id_written_like_file_line_is_always_the_real_line(tmp_path: Path) -> None:
    """Default ids ending in ``:<number>`` are 1-based lines of the file the row is on; every other default id
    that holds a position writes it ``[<number>]`` (the hub source, JSON, the templated builder)."""
    from ift.builtin_plugins.builders.templated import TemplatedConfig, TemplatedSource

    (tmp_path / "a.jsonl").write_text(
        '{"instruction": "first", "output": "1"}\n\n{"instruction": "second", "output": "2"}\n', encoding="utf-8"
    )
    (tmp_path / "b.csv").write_text('instruction,output\n"multi\nline",x\nthird,y\n', encoding="utf-8")
    (tmp_path / "hub").mkdir()
    write_jsonl(tmp_path / "hub" / "train.jsonl", ALPACA)
    (tmp_path / "c.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    templated = TemplatedSource(
        TemplatedConfig.model_validate(
            {
                "rows": {"source": "csv", "path": "b.csv"},
                "tasks": [{"name": "echo", "instructions": ["{{ instruction }}"], "answer": "{{ output }}"}],
            }
        ),
        source_name="t",
        base_dir=tmp_path,
    )
    records = [
        *source(JsonlSource, tmp_path, "a.jsonl").records(),
        *source(CsvSource, tmp_path, "b.csv").records(),
        *source(JsonSource, tmp_path, "c.json").records(),
        *hub(tmp_path / "hub").records(),
        *templated.records(),
    ]
    lines: dict[str, int] = {}
    for record in records:
        name, _, number = record.id.rpartition(":")
        if number.isdigit():
            lines[record.id] = int(number)
            text = (tmp_path / name).read_text(encoding="utf-8").splitlines()[int(number) - 1]
            assert record.messages[0].content.splitlines()[0] in text, record.id
    assert lines == {"a.jsonl:1": 1, "a.jsonl:3": 3, "b.csv:2": 2, "b.csv:4": 4}
    assert [r.id for r in records if r.id not in lines] == [
        "c.json[0]",
        "c.json[1]",
        f"{tmp_path / 'hub'}:train[0]",
        f"{tmp_path / 'hub'}:train[1]",
        "echo[0]",
        "echo[1]",
    ]
