"""examples/preference.toml runs as shipped (a shortened schedule) and its held-out reward accuracy rises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_preference_example_raises_held_out_reward_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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


def _sft_recipe(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    text = (EXAMPLES / "preference.toml").read_text()
    text = text.replace('name = "dpo"\nbeta = 0.5', 'name = "sft"\nmax_steps = 2').replace(
        "data/preference/pairs.jsonl", "data.jsonl"
    )
    path = tmp_path / "sft.toml"
    path.write_text(text)
    return path


def test_sft_on_pairs_learns_the_chosen_answers_and_refuses_undesirable_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = [{"prompt": f"Say {i}", "chosen": str(i), "rejected": "No."} for i in range(12)]
    assert main(["run", str(_sft_recipe(tmp_path, pairs)), "--output-dir", str(tmp_path / "a")]) == 0
    assert "the chosen answers of 11 preference pair(s) are learned" in capsys.readouterr().out
    unpaired = [{"prompt": f"Say {i}", "completion": "No.", "label": False} for i in range(12)]
    assert main(["run", str(_sft_recipe(tmp_path, unpaired)), "--output-dir", str(tmp_path / "b")]) != 0
    assert "use trainer 'kto'" in capsys.readouterr().err
