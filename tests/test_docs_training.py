"""docs/training.md's objective example works as written: saved as a local plugin, ``[trainer] name = "focal"``
trains a tiny run with the loop's keys and its own, logs per-source loss, and ``gamma = 0`` is exactly the plain
``sft`` cross-entropy."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from ift.testing.models import tiny_model_table
from ift.testing.samples import sample_rows

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")


def example(marker: str) -> str:
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", DOC, re.S) if block.startswith(marker)]
    return code


def run(ift_run: Any, trainer: dict[str, Any]) -> tuple[Path, list[dict[str, Any]]]:
    recipe = {
        "run": {"seed": 2},
        "plugins": {"local": ["my_objective.py"]},
        "data": [{"source": "jsonl", "path": "rows.jsonl", "name": "rows"}],
        "model": tiny_model_table(),
        "trainer": {
            "max_steps": 3,
            "batch_size": 4,
            "learning_rate": 1e-2,
            "log_every": 1,
            "shuffle": False,
            "batching": "padding",
            **trainer,
        },
        "eval": {"fraction": 0.25, "metrics": ["loss"], "baseline": False},
    }
    run_dir = ift_run(recipe, files={"rows.jsonl": sample_rows(16), "my_objective.py": example("# my_objective.py")})
    return run_dir, [
        json.loads(line)
        for line in (run_dir / "events.jsonl").read_text().splitlines()
        if '"step"' in line and '"eval"' not in line
    ]


def test_the_documented_objective_trains_by_name(ift_run: Any):
    run_dir, events = run(ift_run, {"name": "focal", "gamma": 2.0})
    trainer = json.loads((run_dir / "resolved.json").read_text())["trainer"]
    assert (trainer["name"], trainer["gamma"], trainer["learning_rate"]) == ("focal", 2.0, 0.01)
    assert [e["step"] for e in events] == [1, 2, 3]
    assert all(set(e["loss_by_source"]) == {"rows"} for e in events)


def test_gamma_zero_is_the_plain_cross_entropy(ift_run: Any):
    _, focal = run(ift_run, {"name": "focal", "gamma": 0.0})
    _, plain = run(ift_run, {"name": "sft"})
    assert [e["loss"] for e in focal] == pytest.approx([e["loss"] for e in plain], rel=1e-4)
