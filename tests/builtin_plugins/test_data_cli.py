"""``ift data build`` and ``ift data report``: the records written, read back through the jsonl source,
the counts printed, atomic writes, and the report wiring."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.data_cli import write_jsonl
from ift.builtin_plugins.sources import JsonlSource
from ift.cli import main

DATA = Path(__file__).resolve().parents[1] / "data" / "builders"

TEMPLATED = """
[run]
name = "reviews"

[[data]]
source = "templated"
name = "reviews"
rows = "reviews.csv"

[[data.tasks]]
name = "sentiment"
instructions = ["Sentiment of: {{ sentence }}"]
answer = "{{ sentiment }}"
choices = ["positive", "negative"]

[[data.tasks]]
name = "greet"
instructions = ["Say hello in {{ target_language }}."]
answer = "Hello ({{ target_language }})"
"""
RETRIEVED = """
[[data]]
source = "retrieved"
name = "picked"
library = "library.jsonl"
query = "Translate a sentence into French"
top_k = 2
"""
DEDUP = """
[[transforms]]
name = "dedup"
by = "prompt"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("reviews.csv", "library.jsonl", "seed_tasks.jsonl"):
        shutil.copy(DATA / name, tmp_path / name)
    return tmp_path


def write(folder: Path, text: str) -> str:
    (folder / "recipe.toml").write_text(text)
    return str(folder / "recipe.toml")


def test_build_writes_messages_jsonl_that_the_jsonl_source_reads_back(folder: Path, capsys) -> None:
    out = folder / "out" / "built.jsonl"
    assert main(["data", "build", write(folder, TEMPLATED + DEDUP), "-o", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("source reviews (templated): 10 records  [sha256:")
    assert printed[1:] == ["transform dedup: 10 -> 8 (duplicate 2)", f"wrote 8 records to {out}"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {
        "id": "sentiment:r1",
        "source": "reviews",
        "task": "sentiment",
        "label": "positive",
        "choices": ["positive", "negative"],
        "metadata": {"row": 0, "phrasing": 0, "template": "tasks[0].instructions[0]"},
        "messages": [
            {"role": "user", "content": "Sentiment of: I love this book."},
            {"role": "assistant", "content": "positive"},
        ],
    }
    assert [r["id"] for r in rows] == [
        "sentiment:r1",
        "sentiment:r2",
        "sentiment:r3",
        "sentiment:r4",
        "sentiment:r5",
        "greet:r1",
        "greet:r2",
        "greet:r3",
    ]  # r4, r5 repeat a prompt
    assert [p.name for p in out.parent.iterdir()] == ["built.jsonl"]  # no temporary file left

    back = list(JsonlSource(JsonlSource.Config(path=str(out)), source_name="again", base_dir=folder).records())
    assert [(r.id, r.task, r.label, r.choices, [(m.role, m.content) for m in r.messages]) for r in back] == [
        (row["id"], row["task"], row["label"], row["choices"], [(m["role"], m["content"]) for m in row["messages"]])
        for row in rows
    ]
    assert back[5].metadata == {"row": 0, "line": 6, "phrasing": 0, "template": "tasks[1].instructions[0]"}


def test_several_sources_get_source_prefixed_ids_and_overrides_apply(folder: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    recipe = write(folder, TEMPLATED + RETRIEVED)
    assert main(["data", "build", recipe, "--set", "run.name=mixed", "--set", "data.1.top_k=1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("source picked (retrieved): 1 records  [sha256:")
    assert printed[-1] == "wrote 11 records to mixed.jsonl"
    rows = [json.loads(line) for line in (folder / "mixed.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows][-2:] == ["reviews/greet:r5", "picked/lib-01"]
    assert rows[-1]["metadata"] == {
        "row": 0,
        "line": 1,
        "retrieval_score": 0.615421,
        "retrieval_query": "Translate a sentence into French",
    }
    assert (
        len(list(JsonlSource(JsonlSource.Config(path="mixed.jsonl"), source_name="x", base_dir=folder).records())) == 11
    )


def test_build_prints_what_self_instruct_kept_and_rejected(folder: Path, capsys) -> None:
    recipe = write(
        folder,
        """
[[data]]
source = "self-instruct"
name = "generated"
seeds = "seed_tasks.jsonl"
model = { tokenizer = "byte-level", device = "cpu", from_config = { model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, max_position_embeddings = 1024 } }
num_instructions = 2
max_rounds = 1
prompts_per_round = 2
max_new_tokens = 16
instance_max_new_tokens = 4
""",
    )
    assert main(["data", "build", recipe, "-o", str(folder / "gen.jsonl")]) == 0
    printed = capsys.readouterr().out
    assert "source generated (self-instruct): " in printed
    assert "candidates in 1 rounds; rejected: " in printed
    assert (folder / "generated.self-instruct" / "state.jsonl").is_file()  # next to the recipe by default


def test_data_errors_are_one_line_with_their_exit_code(folder: Path, capsys) -> None:
    bad_template = TEMPLATED.replace("{{ sentiment }}", "{{ sentimnt }}")
    assert main(["data", "build", write(folder, bad_template), "-o", str(folder / "x.jsonl")]) == 3
    assert capsys.readouterr().err == (
        f"error: {folder / 'reviews.csv'}:2: task 'sentiment', template tasks[0].answer: 'sentimnt' is undefined "
        '(variables: ["choices", "id", "sentence", "sentiment", "target_language", "task", "translation"])\n'
    )
    unknown = TEMPLATED.replace('rows = "reviews.csv"', 'rows = { source = "cvs", path = "reviews.csv" }')
    recipe = write(folder, unknown)
    assert main(["data", "build", recipe, "-o", str(folder / "x.jsonl")]) == 2
    # caught while validating the recipe, before any data is read
    assert capsys.readouterr().err.startswith(
        f"error: {recipe}: invalid recipe: data[0].rows: unknown source 'cvs' (did you mean 'csv'?)"
    )
    assert not (folder / "x.jsonl").exists()


def test_write_jsonl_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "data.jsonl"
    target.write_text("old\n")

    def rows():
        yield {"a": 1}
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl(target, rows())
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]
    assert write_jsonl(target, [{"a": 1}, {"b": "é"}]) == 2
    assert target.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "é"}\n'


def test_report_reads_splits_and_hands_the_training_records_to_the_quality_module(
    folder: Path, capsys, monkeypatch
) -> None:
    calls: dict[str, Any] = {}
    fake = types.ModuleType("ift.builtin_plugins.quality")

    def quality_report(records: list[ift.InstructionRecord], eval_records: Any = None) -> dict[str, Any]:
        calls["records"], calls["eval"] = records, eval_records
        return {"records": len(records)}

    fake.quality_report = quality_report
    fake.write_report = lambda report, output_dir: calls.setdefault("written", (report, Path(output_dir)))
    fake.format_report_table = lambda report: f"TABLE {report['records']}"
    monkeypatch.setitem(sys.modules, "ift.builtin_plugins.quality", fake)
    monkeypatch.chdir(folder)
    recipe = write(
        folder,
        TEMPLATED
        + DEDUP
        + """
[[data]]
source = "jsonl"
path = "library.jsonl"
weight = 2.0

[eval]
fraction = 0.2
""",
    )
    assert main(["data", "report", recipe]) == 0
    printed = capsys.readouterr().out.splitlines()
    # 8 + 10 records after dedup; 20% of each source held out; the weighted copies are reported once
    assert (len(calls["records"]), len(calls["eval"])) == (14, 4)
    assert len({id(r) for r in calls["records"]}) == 14
    assert not {r.id for r in calls["records"]} & {r.id for r in calls["eval"]}
    report, out = calls["written"]
    assert out == Path("reviews-data-report") and report["records"] == 14
    assert report["pipeline"]["split"]["train"] == 14
    assert report["pipeline"]["transforms"][0]["dropped"] == {"duplicate": 2}
    assert printed[-2:] == ["TABLE 14", "report written to reviews-data-report"]


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multitask-templates.toml"


def test_the_multitask_example_builds_and_cleans_exactly(tmp_path: Path, capsys) -> None:
    out = tmp_path / "multitask.jsonl"
    assert main(["data", "build", str(EXAMPLE), "-o", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("  [")[0] for line in printed] == [
        "source words (templated): 656 records",  # 164 rows x 4 tasks
        "source colours (templated): 12 records",
        "transform drop-invalid: 668 -> 666 (empty output 2)",  # the empty row's reverse and uppercase
        "transform dedup: 666 -> 659 (duplicate 7)",  # repeated words where the same phrasing was drawn
        f"wrote 659 records to {out}",
    ]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    phrasings: dict[str, set[int]] = {}
    for row in rows:
        phrasings.setdefault(row["task"], set()).add(row["metadata"]["phrasing"])
    assert phrasings == {
        "reverse": {0, 1, 2},
        "uppercase": {0, 1},
        "vowel-start": {0, 1},
        "length": {0},
        "translate-colour": {0, 1},
    }
    vowel = [r for r in rows if r["task"] == "vowel-start"]
    assert all(r["label"] == r["messages"][-1]["content"] and r["choices"] == ["yes", "no"] for r in vowel)
    csv_rows = (EXAMPLE.parent / "data" / "multitask" / "words.csv").read_text().splitlines()[1:]
    word_of = dict(line.split(",") for line in csv_rows)
    yes = {row_id for row_id, word in word_of.items() if word[:1] in ("a", "e", "i", "o", "u")}
    assert len(yes) == 24  # none of them is a repeated word, so dedup keeps all
    assert {r["id"].rsplit(":", 1)[1] for r in vowel if r["label"] == "yes"} == yes


@pytest.mark.slow
def test_the_multitask_example_trains(tmp_path: Path) -> None:
    assert (
        main(
            [
                "run",
                str(EXAMPLE),
                "-o",
                str(tmp_path / "run"),
                "--set",
                "trainer.max_steps=3",
                "--set",
                "eval.baseline=false",
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["records"] for s in manifest["data"]["sources"]] == [656, 12]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]["overall"]["n"] == 32


def test_data_commands_say_what_left_the_eval_tables(tmp_path: Path, capsys) -> None:
    rows = [{"instruction": f"Say {w}", "output": w} for w in ["a", "b", "c", "d"]]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "e.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [*rows[:1], *rows, {**rows[0], "output": ""}])
    )
    (tmp_path / "r.toml").write_text(
        '[[data]]\nsource = "jsonl"\npath = "t.jsonl"\nsplit = "train"\n\n'
        '[[data]]\nsource = "jsonl"\nname = "held"\npath = "e.jsonl"\nsplit = "eval"\n\n'
        '[[transforms]]\nname = "drop-invalid"\n\n[eval]\nmax_examples = 3\n'
    )
    assert main(["data", "build", str(tmp_path / "r.toml"), "-o", str(tmp_path / "o.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "note: transform 'drop-invalid' dropped 1 of 6 records of the eval table(s) (split = 'eval')" in out
    assert main(["data", "report", str(tmp_path / "r.toml"), "-o", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "note: transform 'drop-invalid' dropped 1 of 6 records of the eval table(s)" in out
    assert "note: eval.max_examples = 3 kept 3 of the 5 records of eval table 'held'" in out
