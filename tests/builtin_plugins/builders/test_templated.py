"""The ``templated`` builder: exact records from rows x templates, seeded phrasings that are stable per row,
few-shot examples, answer choices, nested sources of every kind, and errors naming template and row."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import ift
from ift.builtin_plugins.builders.templated import TemplatedConfig, TemplatedSource
from ift.host import PluginHost
from ift.recipe import validate_recipe

DATA = Path(__file__).resolve().parents[2] / "data" / "builders"
TRANSLATE = {
    "name": "translate",
    "answer": "{{ translation }}",
    "instructions": [
        "Translate into {{ target_language }}: {{ sentence }}",
        'How do you say "{{ sentence }}" in {{ target_language }}?',
    ],
}
SENTIMENT = {
    "name": "sentiment",
    "answer": "{{ sentiment }}",
    "choices": ["positive", "negative"],
    "instructions": [
        "Is the sentiment of this sentence positive or negative?\n{{ sentence }}",
        "Classify the sentiment ({{ choices | join(' / ') }}): {{ sentence }}",
    ],
}


def build(folder: Path, host: PluginHost | None = None, **config: Any) -> list[ift.InstructionRecord]:
    source = TemplatedSource(TemplatedConfig.model_validate(config), source_name="built", base_dir=folder, host=host)
    return list(source.records())


def texts(records: list[ift.InstructionRecord]) -> list[tuple[str, ...]]:
    return [(r.id, *(m.content for m in r.messages)) for r in records]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_five_rows_two_tasks_give_exactly_these_ten_records(host: PluginHost) -> None:
    records = build(DATA, host, rows={"source": "csv", "path": "reviews.csv"}, tasks=[TRANSLATE, SENTIMENT])
    assert texts(records) == [
        ("translate:r1", 'How do you say "I love this book." in French?', "J'adore ce livre."),
        ("translate:r2", "Translate into German: The train was late again.", "Der Zug war wieder zu spät."),
        ("translate:r3", "Translate into Spanish: What a beautiful morning!", "¡Qué mañana tan hermosa!"),
        ("translate:r4", 'How do you say "This coffee tastes awful." in French?', "Ce café a un goût horrible."),
        ("translate:r5", "Translate into German: The service was excellent.", "Der Service war ausgezeichnet."),
        ("sentiment:r1", "Classify the sentiment (positive / negative): I love this book.", "positive"),
        ("sentiment:r2", "Classify the sentiment (positive / negative): The train was late again.", "negative"),
        ("sentiment:r3", "Classify the sentiment (positive / negative): What a beautiful morning!", "positive"),
        ("sentiment:r4", "Classify the sentiment (positive / negative): This coffee tastes awful.", "negative"),
        ("sentiment:r5", "Classify the sentiment (positive / negative): The service was excellent.", "positive"),
    ]
    assert {r.source for r in records} == {"built"}
    assert [r.task for r in records] == ["translate"] * 5 + ["sentiment"] * 5
    assert [(r.label, r.choices) for r in records[:5]] == [(None, None)] * 5
    assert [r.label for r in records[5:]] == ["positive", "negative", "positive", "negative", "positive"]
    assert all(r.choices == ["positive", "negative"] for r in records[5:])
    assert records[0].metadata == {"row": 0, "phrasing": 1, "template": "tasks[0].instructions[1]"}


def test_phrasings_are_all_used_stable_per_row_and_seeded(tmp_path: Path) -> None:
    rows = [{"id": f"w{i}", "word": f"word{i}"} for i in range(60)]
    write_jsonl(tmp_path / "words.jsonl", rows)
    task = {
        "name": "upper",
        "answer": "{{ word | upper }}",
        "instructions": ["Upper-case: {{ word }}", "Write {{ word }} in capitals.", "SHOUT {{ word }}"],
    }
    first = build(tmp_path, rows="words.jsonl", tasks=[task])
    assert Counter(r.metadata["phrasing"] for r in first) == {0: 22, 1: 17, 2: 21}
    assert texts(build(tmp_path, rows="words.jsonl", tasks=[task])) == texts(first)
    # adding and removing other rows changes no row's wording
    write_jsonl(tmp_path / "words.jsonl", [{"id": "new", "word": "fresh"}, *rows[30:]])
    again = {r.id: r.messages[0].content for r in build(tmp_path, rows="words.jsonl", tasks=[task])}
    assert all(again[r.id] == r.messages[0].content for r in first[30:])
    other_seed = build(tmp_path, rows="words.jsonl", tasks=[task], seed=1)
    assert (
        sum(a.metadata["phrasing"] != b.metadata["phrasing"] for a, b in zip(other_seed, first[30:], strict=False)) > 10
    )


def test_few_shot_examples_are_other_rows_with_their_answers(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "w.jsonl", [{"word": w} for w in ["cat", "dog", "owl", "yak"]])
    template = "{% for ex in examples %}{{ ex.word }} -> {{ ex.answer }}\n{% endfor %}{{ word }} ->"
    records = build(
        tmp_path,
        rows="w.jsonl",
        tasks=[{"name": "rev", "instructions": [template], "answer": "{{ word | reverse }}", "few_shot": 2}],
    )
    assert texts(records) == [
        ("rev[0]", "yak -> kay\ndog -> god\ncat ->", "tac"),
        ("rev[1]", "owl -> lwo\nyak -> kay\ndog ->", "god"),
        ("rev[2]", "yak -> kay\ncat -> tac\nowl ->", "lwo"),
        ("rev[3]", "owl -> lwo\ncat -> tac\nyak ->", "kay"),
    ]


def test_choices_from_a_column_system_prompt_and_label_template(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text("question,options,answer\nSky colour?,blue|green,blue\n2+2?,3|4|5,4\n")
    records = build(
        tmp_path,
        rows="q.csv",
        tasks=[
            {
                "name": "quiz",
                "system": "Answer with one option.",
                "choices_column": "options",
                "instructions": ["{{ question }} Options: {{ choices | join(', ') }}"],
                "answer": "The answer is {{ answer }}.",
                "label": "{{ answer }}",
            }
        ],
    )
    assert texts(records) == [
        ("quiz[0]", "Answer with one option.", "Sky colour? Options: blue, green", "The answer is blue."),
        ("quiz[1]", "Answer with one option.", "2+2? Options: 3, 4, 5", "The answer is 4."),
    ]
    assert [(r.label, r.choices) for r in records] == [("blue", ["blue", "green"]), ("4", ["3", "4", "5"])]


def test_a_label_outside_the_choices_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("text,label\ngood,positive\nmeh,neutral\n")
    with pytest.raises(ift.DataError, match=r"s\.csv:3: task 'sent': label 'neutral' is not one of the choices"):
        build(
            tmp_path,
            rows="s.csv",
            tasks=[
                {
                    "name": "sent",
                    "instructions": ["{{ text }}"],
                    "answer": "{{ label }}",
                    "choices": ["positive", "negative"],
                }
            ],
        )


def test_an_undefined_variable_names_the_template_and_the_row(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("sentence,lang\nhello,French\n")
    task = {
        "name": "tr",
        "instructions": ["Say {{ sentence }}", "Into {{ language }}: {{ sentence }}"],
        "answer": "{{ sentence }}",
    }
    with pytest.raises(
        ift.DataError,
        match=r"r\.csv:2: task 'tr', template tasks\[0\]\.instructions\[1\]: "
        r"'language' is undefined \(variables: \[\"examples\", \"lang\", \"sentence\", \"task\"\]\)",
    ):
        build(tmp_path, rows="r.csv", tasks=[task], seed=3)


def test_template_syntax_errors_are_reported_when_the_recipe_is_validated(host: PluginHost, tmp_path: Path):
    raw = {
        "data": [
            {
                "source": "templated",
                "rows": {"source": "csv", "pth": "r.csv"},
                "tasks": [{"name": "t", "instructions": ["ok {{ a }}", "broken {{ a "], "answr": "x"}],
            }
        ],
        "model": {"tokenizer": "byte-level", "from_config": {"model_type": "llama"}},
    }
    with pytest.raises(ift.RecipeError) as info:
        validate_recipe(raw, host, base_dir=tmp_path)
    problems = {p.key: p.message for p in info.value.problems}
    assert "unknown key 'pth' (did you mean 'path'?)" in problems["data[0].rows"]
    assert "instructions[1]: template syntax error at line 1" in problems["data[0].tasks[0].instructions"]
    assert problems["data[0].tasks[0].answr"].startswith("unknown key (did you mean 'answer'?)")
    with pytest.raises(ValidationError, match="set rows"):
        TemplatedConfig.model_validate({"tasks": [{"name": "t", "instructions": ["x"], "answer": "y"}]})


def test_with_the_host_in_the_validation_context_every_nested_source_is_checked(host: PluginHost) -> None:
    task = {"name": "t", "instructions": ["x"], "answer": "y"}
    unknown = {"rows": {"source": "cvs", "path": "r.csv"}, "tasks": [task]}
    TemplatedConfig.model_validate(unknown)  # without a host: checked when the source runs
    with pytest.raises(ValidationError, match=r"unknown source 'cvs' \(did you mean 'csv'\?\); available: csv,"):
        TemplatedConfig.model_validate(unknown, context={"host": host})
    nested_builder = {"rows": {"source": "retrieved", "library": "l.jsonl", "qury": "x"}, "tasks": [task]}
    with pytest.raises(ValidationError, match=r"unknown key 'qury' \(did you mean 'query'\?\)"):
        TemplatedConfig.model_validate(nested_builder, context={"host": host})


def test_rows_from_json_parquet_files_and_from_any_registered_source(host: PluginHost, tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "r.json").write_text(json.dumps({"items": [{"id": "a", "x": "1"}, {"id": "b", "x": "2"}]}))
    pq.write_table(pa.Table.from_pylist([{"x": "3"}, {"x": "4"}, {"x": "5"}]), tmp_path / "r.parquet")
    write_jsonl(tmp_path / "qa.jsonl", [{"id": "q1", "prompt": "Capital of France?", "completion": "Paris"}])

    class MemorySource(ift.InstructionSource):  # a plugin source without rows(): its records are flattened
        name = "memory"

        def records(self):
            yield from self.open_nested({"source": "jsonl", "path": "qa.jsonl"}, "x").records()

    class Plugin:
        @ift.hookimpl
        def ift_register_sources(self):
            return [MemorySource]

    host.register(Plugin(), "memory-plugin")
    records = build(
        tmp_path,
        host,
        tasks=[
            {
                "name": "j",
                "rows": {"source": "json", "path": "r.json", "field": "items"},
                "instructions": ["x={{ x }}"],
                "answer": "{{ x }}!",
            },
            {
                "name": "p",
                "rows": {"path": "r.parquet", "limit": 2},
                "instructions": ["x={{ x }}"],
                "answer": "{{ x }}",
            },
            {
                "name": "m",
                "rows": {"source": "memory"},
                "instructions": ["Briefly: {{ prompt }}"],
                "answer": "{{ answer }} ({{ id }})",
            },
        ],
    )
    assert texts(records) == [
        ("j:a", "x=1", "1!"),
        ("j:b", "x=2", "2!"),
        ("p[0]", "x=3", "3"),
        ("p[1]", "x=4", "4"),
        ("m:q1", "Briefly: Capital of France?", "Paris (q1)"),
    ]


def test_instruction_files_and_fingerprints(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("n\n1\n2\n")
    (tmp_path / "double.jinja").write_text("Example: 5 doubled is 10.\nNow double {{ n }}.\n")
    config = TemplatedConfig(
        rows={"source": "csv", "path": "rows.csv"},
        tasks=[{"name": "double", "instruction_files": ["double.jinja"], "answer": "{{ n | int * 2 }}"}],
    )
    source = TemplatedSource(config, source_name="s", base_dir=tmp_path)
    before = source.content_fingerprint()
    assert texts(list(source.records())) == [
        ("double[0]", "Example: 5 doubled is 10.\nNow double 1.", "2"),
        ("double[1]", "Example: 5 doubled is 10.\nNow double 2.", "4"),
    ]
    assert source.fingerprint() == before
    (tmp_path / "double.jinja").write_text("Double {{ n }}.")
    assert source.content_fingerprint() != before
    (tmp_path / "rows.csv").write_text("n\n1\n3\n")
    assert TemplatedSource(config, source_name="s", base_dir=tmp_path).fingerprint() not in (
        before,
        source.fingerprint(),
    )
