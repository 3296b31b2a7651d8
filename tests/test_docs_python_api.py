"""docs/python-api.md's notebook runs as written: its ``python`` blocks are executed in order, as notebook cells,
in a fresh folder; and the reference names every public name of the API."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

import ift

DOC = (Path(__file__).resolve().parents[1] / "docs" / "python-api.md").read_text(encoding="utf-8")
CELLS = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)


def run_cell(source: str, namespace: dict[str, Any]) -> Any:
    """Run one cell as Jupyter does: statements, then the value of a last bare expression (what the cell shows)."""
    import ast

    tree = ast.parse(source)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    return eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace) if last else None


@pytest.mark.slow
def test_the_notebook_runs_cell_by_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IFT_CACHE_DIR", str(tmp_path / "cache"))
    assert len(CELLS) == 9
    namespace: dict[str, Any] = {}
    outputs = []
    for cell in CELLS:
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown):
            value = run_cell(cell, namespace)
        outputs.append((shown.getvalue(), value))
    assert repr(outputs[1][1]).startswith("LoadedRecipe('upper': dict recipe, base_dir ")
    assert outputs[2][0].startswith("36 train / 12 eval records\n")
    run_output, result = outputs[3]
    assert isinstance(result, ift.RunResult) and result.status == "completed"
    assert run_output.startswith("run directory: runs/upper\n") and "\r" not in run_output
    assert (tmp_path / "runs" / "upper" / "model" / "config.json").is_file()
    assert "metric" in outputs[4][0] and "before" in outputs[4][0]
    assert outputs[5][1][0] == "LlamaForCausalLM"
    finals = outputs[6][1]
    assert set(finals) == {1e-3, 3e-3} and finals[3e-3] != finals[1e-3]
    assert outputs[6][0] == ""  # progress="off"
    errors = outputs[7][0]
    assert "trainer.max_steps: Input should be greater than 0 (got -1)" in errors
    assert "trainer.epochz: unknown key" in errors and "runs/upper already exists and is not empty" in errors
    again = namespace["again"]
    assert again.status == "completed" and not again.ran
    assert outputs[8][0].startswith("completed ")
    # the saved model answers as the one the run held in memory did
    assert outputs[8][0].splitlines()[1] == repr(namespace["answer"])


def test_the_reference_covers_the_public_api() -> None:
    for name in (
        "ift.load_recipe",
        "ift.preview",
        "ift.run",
        "ift.load_run",
        "RunResult",
        "LoadedRecipe",
        "PreviewResult",
        "PreviewExample",
        "keep_model",
        "base_dir",
        "overwrite",
        "resume",
    ):
        assert name in DOC, name
    for field in ("run_dir", "metrics", "model_dir", "events()", "generate(", "release()", "open("):
        assert f"`{field}" in DOC or f"{field}`" in DOC or field in DOC, field
    for attribute in (
        "model_dir",
        "metrics_file",
        "manifest_file",
        "events_file",
        "recipe_file",
        "resolved_file",
        "checkpoints_dir",
        "final",
        "baseline",
        "table",
        "open",
        "generate",
        "release",
    ):
        assert hasattr(ift.RunResult, attribute), attribute
