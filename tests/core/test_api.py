"""The Python API (ift.load_recipe / ift.run / ift.preview / ift.load_run) goes the CLI's way: the same run
directory for the same recipe and seed, the same errors (raised, with the message `ift` prints), and a dict
recipe or overrides give what the TOML file and --set give."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.cli import main
from ift.recipe import tomllib

ROWS = [
    {"instruction": f"Uppercase: {w}", "input": "", "output": w.upper()}
    for w in [
        "abc",
        "dog",
        "cat",
        "xyz",
        "sun",
        "map",
        "red",
        "toy",
        "fig",
        "jam",
        "owl",
        "pen",
        "rug",
        "sky",
        "tea",
        "van",
    ]
]
ROWS_BY_PROMPT = {r["instruction"]: r["output"] for r in ROWS}
TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
#: the recipe as a dict; RECIPE_TOML is the same recipe as a file
RECIPE: dict[str, Any] = {
    "run": {"name": "tiny", "seed": 7},
    "data": [{"source": "jsonl", "path": "data.jsonl"}],
    "template": {"name": "alpaca"},
    "model": {"adapter": "causal-lm", "tokenizer": "byte-level", "from_config": TINY},
    "trainer": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3, "log_every": 1, "max_length": 64},
    "eval": {"fraction": 0.25, "metrics": ["loss", "exact_match"], "max_new_tokens": 3},
}
RECIPE_TOML = """
[run]
name = "tiny"
seed = 7

[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
name = "alpaca"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = { model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 64 }

[trainer]
max_steps = 3
batch_size = 4
learning_rate = 1e-3
log_every = 1
max_length = 64

[eval]
fraction = 0.25
metrics = ["loss", "exact_match"]
max_new_tokens = 3
"""
#: what differs between two runs of the same recipe and seed: clock times and speeds
TIMING = ("started", "finished", "updated", "seconds", "per_s", "wait_fraction", "memory", "elapsed")


def without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def read(run_dir: Path, name: str) -> Any:
    return json.loads((run_dir / name).read_text(encoding="utf-8"))


def files(run_dir: Path) -> list[str]:
    """The run directory's files; TensorBoard's event file names carry the time and pid."""
    return sorted(
        str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if not p.name.startswith("events.out.tfevents.")
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("api")
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (work / "recipe.toml").write_text(RECIPE_TOML, encoding="utf-8")
    yield work


@pytest.fixture(scope="module")
def runs(work: Path) -> dict[str, Any]:
    """The same recipe run three ways: `ift run`, ift.run on the file, ift.run on the dict (each with its own
    prepared-data cache, so each prepares its data afresh)."""
    old = os.environ.get("IFT_CACHE_DIR")
    try:
        os.environ["IFT_CACHE_DIR"] = str(work / "cache-cli")
        assert main(["run", str(work / "recipe.toml"), "-o", str(work / "cli")]) == 0
        os.environ["IFT_CACHE_DIR"] = str(work / "cache-file")
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown):  # a notebook cell's output is stdout
            from_file = ift.run(work / "recipe.toml", output_dir=work / "api")
        os.environ["IFT_CACHE_DIR"] = str(work / "cache-dict")
        silent = io.StringIO()
        with contextlib.redirect_stdout(silent):
            from_dict = ift.run(RECIPE, base_dir=work, output_dir=work / "dict", progress="off")
    finally:
        if old is None:
            os.environ.pop("IFT_CACHE_DIR", None)
        else:
            os.environ["IFT_CACHE_DIR"] = old
    return {
        "cli": work / "cli",
        "file": from_file,
        "dict": from_dict,
        "shown": shown.getvalue(),
        "silent": silent.getvalue(),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "dict"])
def test_api_run_directory_is_the_cli_s(runs: dict[str, Any], kind: str) -> None:
    cli, result = runs["cli"], runs[kind]
    api = result.run_dir
    expected = files(cli)
    assert files(api) == expected
    assert {"manifest.json", "metrics.json", "events.jsonl", "status.json", "model/model.safetensors"} <= set(expected)
    assert read(api, "metrics.json")["final"] == read(cli, "metrics.json")["final"]  # the numbers, exactly
    assert without_timing(read(api, "metrics.json")) == without_timing(read(cli, "metrics.json"))
    assert (api / "model" / "model.safetensors").read_bytes() == (cli / "model" / "model.safetensors").read_bytes()
    assert without_timing(read(api, "manifest.json")) == without_timing(read(cli, "manifest.json"))
    assert read(api, "resolved.json") == read(cli, "resolved.json")
    events = [json.loads(line) for line in (api / "events.jsonl").read_text().splitlines()]
    assert without_timing(events) == without_timing(
        [json.loads(line) for line in (cli / "events.jsonl").read_text().splitlines()]
    )
    assert read(api, "status.json")["status"] == "completed"
    assert result.status == "completed" and result.ran and result.metrics == read(api, "metrics.json")
    assert [e["step"] for e in result.events()] == [1, 2, 3]
    assert result.final["n"] == 4 and result.final["loss"] < result.baseline["loss"]


@pytest.mark.slow
def test_progress_goes_to_stdout_as_plain_lines(runs: dict[str, Any], work: Path) -> None:
    lines = runs["shown"].splitlines()
    assert lines[0] == f"run directory: {work / 'api'}"
    assert "[training]" in lines and lines[-1] == f"done: {work / 'api'}  (model: {work / 'api' / 'model'})"
    assert [line.split("  ")[0] for line in lines if line.startswith("step ")] == ["step 1/3", "step 2/3", "step 3/3"]
    assert any(line.startswith("eval final: loss ") for line in lines)
    assert "\r" not in runs["shown"] and "\x1b" not in runs["shown"]
    assert runs["silent"] == ""  # progress="off"


@pytest.mark.slow
def test_the_file_recipe_is_kept_as_given_and_the_dict_recipe_as_its_toml(runs: dict[str, Any], work: Path) -> None:
    assert (runs["file"].recipe_file).read_text() == RECIPE_TOML
    text = runs["dict"].recipe_file.read_text()
    assert text.startswith(f"# a dict recipe given to ift.load_recipe; relative paths resolve against {work}\n")
    assert tomllib.loads(text) == RECIPE  # what was trained is exactly what recipe.toml says


@pytest.mark.slow
def test_result_paths_and_model_handle(runs: dict[str, Any]) -> None:
    result = runs["file"]
    assert result.model_dir == result.run_dir / "model" and (result.model_dir / "config.json").is_file()
    assert result.manifest["seed"] == 7
    assert "loss" in result.table() and "(4 held-out examples)" in result.table()
    assert result._repr_html_() == (
        f"<p><b>completed</b>: <code>{result.run_dir}</code></p><pre>{result.table()}</pre>"
    )
    in_memory = result.generate("Uppercase: dog", max_new_tokens=3)
    assert result.model is result.open().model  # the trained model, not reloaded
    reopened = ift.load_run(result.run_dir)
    assert reopened.status == "completed" and not reopened.ran and reopened.metrics == result.metrics
    # the saved folder, loaded as `ift generate` loads it, answers the same
    assert reopened.generate("Uppercase: dog", max_new_tokens=3) == in_memory
    assert reopened.model is not result.model


@pytest.mark.slow
def test_resume_of_a_completed_run_returns_it(
    runs: dict[str, Any], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    again = ift.run(work / "recipe.toml", output_dir=work / "api", resume=True)
    assert not again.ran and again.status == "completed" and again.metrics == runs["file"].metrics
    assert f"{work / 'api'}: the run already completed; nothing to resume" in capsys.readouterr().out


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert err.count("error: ") == 1, err
    return code, err[err.index("error: ") :].removeprefix("error: ").rstrip("\n")  # the message, every line


def test_recipe_errors_are_raised_with_the_cli_s_message(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = work / "bad.toml"
    bad.write_text(RECIPE_TOML.replace("max_steps = 3", "max_steps = -1\nepochz = 2"), encoding="utf-8")
    code, message = cli_error(["validate", str(bad)], capsys)
    with pytest.raises(ift.RecipeError) as caught:
        ift.load_recipe(bad)
    assert str(caught.value) == message and caught.value.exit_code == code == 2
    assert "trainer.epochz" in message and "trainer.max_steps" in message
    with pytest.raises(ift.RecipeError) as from_run:
        ift.run(bad, output_dir=work / "never", progress="off")
    assert str(from_run.value) == message
    assert not (work / "never").exists()  # as `ift run`: a recipe that does not validate makes no run directory


def test_a_dict_recipe_reports_problems_by_key_without_a_file(work: Path) -> None:
    broken = {**RECIPE, "trainer": {**RECIPE["trainer"], "learning_rate": "fast"}}
    with pytest.raises(ift.RecipeError, match=r"trainer\.learning_rate") as caught:
        ift.load_recipe(broken, base_dir=work)
    assert "recipe.toml" not in str(caught.value)
    with pytest.raises(ift.RecipeError, match="cannot be written as TOML"):
        ift.load_recipe({**RECIPE, "run": {"name": object()}}, base_dir=work)


def test_run_directory_errors_match_the_cli(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = work / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    code, message = cli_error(["run", str(work / "recipe.toml"), "-o", str(taken)], capsys)
    with pytest.raises(ift.RecipeError) as caught:
        ift.run(work / "recipe.toml", output_dir=taken, progress="off")
    assert str(caught.value) == message and code == 2 and "--overwrite" in message
    assert (taken / "notes.txt").read_text() == "mine"

    busy = work / "busy"
    busy.mkdir()
    (busy / "x").write_text("")
    holder = subprocess.Popen(  # another process holds the run directory, as a running `ift run` does
        [
            sys.executable,
            "-c",
            "import sys; from ift.rundir import hold_run_directory\n"
            f"with hold_run_directory({str(busy)!r}):\n    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, message = cli_error(["run", str(work / "recipe.toml"), "-o", str(busy), "--overwrite"], capsys)
        with pytest.raises(ift.RunDirectoryInUse) as in_use:
            ift.run(work / "recipe.toml", output_dir=busy, overwrite=True, progress="off")
        assert str(in_use.value) == message and "is in use by another ift process" in message
        assert in_use.value.exit_code == code
    finally:
        holder.communicate("", timeout=30)
    assert (busy / "x").is_file()  # refused before anything was cleared


def test_overrides_as_a_dict_or_as_set_strings(work: Path) -> None:
    loaded = ift.load_recipe(
        work / "recipe.toml", overrides={"trainer.max_steps": 5, "eval.metrics": ["loss"], "run.name": "renamed"}
    )
    resolved = loaded.resolved()
    assert (resolved["trainer"]["max_steps"], resolved["eval"]["metrics"], loaded.name) == (5, ["loss"], "renamed")
    assert resolved["overrides"] == ["trainer.max_steps=5", 'eval.metrics=["loss"]', 'run.name="renamed"']
    as_set = ift.load_recipe(work / "recipe.toml", overrides=resolved["overrides"])
    assert as_set.resolved() == resolved
    more = loaded.with_overrides(["trainer.batch_size=2"])
    assert more.resolved()["trainer"]["batch_size"] == 2 and more.resolved()["trainer"]["max_steps"] == 5
    assert more.overrides == (*loaded.overrides, "trainer.batch_size=2")
    assert loaded.resolved()["trainer"]["batch_size"] == 4  # the original is unchanged
    with pytest.raises(ift.RecipeError, match="a list of KEY=VALUE strings or a dict"):
        ift.load_recipe(work / "recipe.toml", overrides="trainer.max_steps=2")  # type: ignore[arg-type]
    with pytest.raises(ift.RecipeError, match="base_dir= is only for a dict recipe"):
        ift.load_recipe(work / "recipe.toml", base_dir=work)
    with pytest.raises(ValueError, match="this one is loaded already"):
        ift.preview(loaded, base_dir=work)
    with pytest.raises(ValueError, match="progress must be 'auto', 'lines' or 'off'"):
        ift.run(loaded, progress="bar")  # type: ignore[arg-type]


def test_dict_recipe_paths_resolve_against_base_dir(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no data.jsonl here
    loaded = ift.load_recipe({**RECIPE, "data": [{"source": "jsonl", "path": Path("data.jsonl")}]}, base_dir=work)
    assert loaded.base_dir == work.resolve() and loaded.path is None
    assert ift.preview(loaded, n=1).train_records == 12
    with pytest.raises(ift.IftError, match="data.jsonl"):  # without base_dir: the current folder
        ift.preview(RECIPE, n=1)


def test_preview_as_data_is_what_ift_preview_prints(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shown = ift.preview(work / "recipe.toml", n=2, tokens=True)
    assert isinstance(shown, ift.PreviewResult)
    assert (shown.train_records, shown.eval_records, len(shown.examples)) == (12, 4, 2)
    first = shown.examples[0]
    assert (
        first.trainable_text
        == ROWS_BY_PROMPT[first.text.split("### Instruction:\n")[1].split("\n")[0]] + "<|endoftext|>"
    )
    assert first.trainable_tokens == len(first.trainable_text.encode()) - len("<|endoftext|>") + 1
    rows = first.token_rows
    assert rows is not None and len(rows) == first.tokens
    assert sum(r["trained"] for r in rows) == first.trainable_tokens
    html = shown._repr_html_()  # what Jupyter shows for the value
    assert "12 train / 4 eval records" in html and "<|endoftext|>" not in html
    from html import escape

    assert f'<span style="background: #c8f0c8; color: #063">{escape(first.trainable_text)}</span>' in html
    capsys.readouterr()
    assert main(["preview", str(work / "recipe.toml"), "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("12 train / 4 eval records")
    for example in shown.examples:
        assert f"--- {example.id} (source data): {example.tokens} tokens, {example.trainable_tokens} trainable" in out
        assert example.text in out


def test_import_ift_exposes_the_api_without_torch() -> None:
    code = (
        "import sys, ift; assert callable(ift.run) and callable(ift.preview) and callable(ift.load_recipe); "
        "print('torch' in sys.modules, 'ift.pipeline' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]
    assert {"load_recipe", "run", "preview", "load_run", "RunResult", "LoadedRecipe", "PreviewResult"} <= set(
        ift.__all__
    )


def test_a_failing_run_raises_the_cli_s_error_and_leaves_the_same_status(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IFT_NO_CACHE", "1")
    code, message = cli_error(
        ["run", str(work / "recipe.toml"), "-o", str(tmp_path / "cli"), "--set", "trainer.max_length=4"], capsys
    )
    with pytest.raises(ift.DataError) as caught:
        ift.run(work / "recipe.toml", output_dir=tmp_path / "api", overrides={"trainer.max_length": 4}, progress="off")
    assert str(caught.value) == message and caught.value.exit_code == code == 3
    assert "every training example was dropped while tokenizing" in message
    cli_status, api_status = read(tmp_path / "cli", "status.json"), read(tmp_path / "api", "status.json")
    assert api_status["status"] == cli_status["status"] == "failed"
    assert api_status["error"] == cli_status["error"] == message
    assert files(tmp_path / "api") == files(tmp_path / "cli")
    assert not (tmp_path / "api" / "metrics.json").exists()
    failed = ift.load_run(tmp_path / "api")
    assert (failed.status, failed.error, failed.metrics) == ("failed", message, {})
    with pytest.raises(ift.RunError, match="the run did not complete"):
        failed.open()


RESUME_RECIPE = RECIPE_TOML.replace("max_steps = 3", "max_steps = 6\nsave_every = 1\nkeep_last = 2")


@pytest.mark.slow
def test_resume_continues_a_killed_run_to_the_cli_s_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    monkeypatch.setenv("IFT_NO_CACHE", "1")
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (tmp_path / "r.toml").write_text(RESUME_RECIPE, encoding="utf-8")
    assert main(["run", str(tmp_path / "r.toml"), "-o", str(tmp_path / "reference")]) == 0
    killed = subprocess.run(
        [sys.executable, "-m", "ift.cli", "run", "r.toml", "-o", "run"],
        cwd=tmp_path,
        env={**os.environ, "IFT_FAULT": "step-4"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    result = ift.run(tmp_path / "r.toml", output_dir=tmp_path / "run", resume=True, progress="off")
    assert result.ran and result.resumed and result.status == "completed"
    reference = tmp_path / "reference"
    assert (result.model_dir / "model.safetensors").read_bytes() == (
        reference / "model" / "model.safetensors"
    ).read_bytes()
    assert [(e["step"], e["loss"]) for e in result.events() if "step" in e] == [
        (e["step"], e["loss"])
        for e in map(json.loads, (reference / "events.jsonl").read_text().splitlines())
        if "step" in e
    ]
    assert read(result.run_dir, "metrics.json")["final"] == read(reference, "metrics.json")["final"]
    assert len(result.manifest["resumes"]) == 1
