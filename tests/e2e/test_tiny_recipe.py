"""examples/tiny.toml, the smoke path, runs as shipped (a few steps here; the README states the full run's
figures) and leaves a complete run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "tiny.toml"


@pytest.mark.slow
def test_tiny_recipe_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IFT_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(RECIPE),
                "-o",
                str(run),
                "--set",
                "trainer.max_steps=3",
                "--set",
                "eval.max_examples=8",
                "--set",
                "eval.max_new_tokens=4",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3
    assert metrics["baseline"]["overall"]["n"] == metrics["final"]["overall"]["n"] == 8
    assert metrics["final"]["overall"]["loss"] < metrics["baseline"]["overall"]["loss"]
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert (run / "model" / "config.json").is_file()
