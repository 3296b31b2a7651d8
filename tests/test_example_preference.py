"""examples/preference.toml runs as shipped (a shortened schedule) and its held-out reward accuracy rises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_preference_example_raises_held_out_reward_accuracy(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["run", str(EXAMPLES / "preference.toml"), "--output-dir", str(out), "--set", "trainer.epochs=2"])
    output = capsys.readouterr().out
    assert code == 0, output
    figures = json.loads((out / "metrics.json").read_text())["preference"]
    assert figures["baseline"]["reward_accuracy"] == 0.0  # the policy is its own reference before training
    assert figures["final"]["reward_accuracy"] >= 0.8
    assert figures["final"]["reward_margin"] > figures["baseline"]["reward_margin"]
    assert figures["final"]["n"] == 20
    assert "preference (held-out, 20): reward accuracy 0.000 ->" in output
