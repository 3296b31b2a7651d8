"""The builtin TensorBoard logger: a tiny run's event file, read back with TensorBoard's own reader, holds
exactly the losses of events.jsonl and the evaluations; it can be turned off; only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.builtin_plugins import tensorboard as tb
from ift.cli import main

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
        "wax",
        "yak",
        "zip",
        "elm",
    ]
]
RECIPE = """
[run]
name = "tb"
seed = 3

[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
name = "alpaca"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
device = "cpu"
from_config = { model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 64 }

[trainer]
name = "sft"
max_steps = 4
batch_size = 4
learning_rate = 1e-3
log_every = 1
eval_every = 2
max_length = 64

[eval]
fraction = 0.2
metrics = ["loss"]
"""


def run(tmp_path: Path) -> Path:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "recipe.toml").write_text(RECIPE)
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "recipe.toml"), "--output-dir", str(out)]) == 0
    return out


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_event_file_holds_the_logged_steps_and_evaluations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("IFT_TENSORBOARD", raising=False)
    out = run(tmp_path)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if "loss" in e and "step" in e]
    scalars = read_scalars(out)
    assert [s for s, _ in scalars["train/loss"]] == [e["step"] for e in steps] == [1, 2, 3, 4]
    # TensorBoard stores float32: equal to the float32 of each logged value
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([e["loss"] for e in steps], rel=1e-6)
    for key in ("learning_rate", "tokens_per_s", "padding_fraction"):
        assert [v for _, v in scalars[f"train/{key}"]] == pytest.approx([e[key] for e in steps], rel=1e-6), key
    metrics = json.loads((out / "metrics.json").read_text())
    eval_loss = dict(scalars["eval/loss"])
    assert sorted(eval_loss) == [0, 2, 4]  # baseline at 0, step-2, step-4 and final at the last step
    assert [v for s, v in scalars["eval/loss"] if s == 0] == pytest.approx([metrics["baseline"]["overall"]["loss"]])
    assert scalars["eval/loss"][-1][1] == pytest.approx(metrics["final"]["overall"]["loss"], rel=1e-6)
    per_source = scalars["eval/data/loss"]
    assert per_source[-1][1] == pytest.approx(metrics["final"]["per_source"]["data"]["loss"], rel=1e-6)
    assert not tb._writers  # closed at run end


@pytest.mark.slow
def test_turned_off_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IFT_TENSORBOARD", "0")
    out = run(tmp_path)
    assert (out / "metrics.json").is_file() and not (out / "tensorboard").exists()


def test_enabled_reads_environment_then_recipe(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("IFT_TENSORBOARD", raising=False)
    assert tb.enabled({"run": {}}) and tb.enabled({})
    assert not tb.enabled({"run": {"tensorboard": False}})
    for value in ("0", "false", "off", "No"):
        monkeypatch.setenv("IFT_TENSORBOARD", value)
        assert not tb.enabled({"run": {"tensorboard": True}})


def test_only_the_main_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("IFT_TENSORBOARD", raising=False)
    tb.ift_run_start(str(tmp_path), {"run": {}})
    tb.ift_step_end(str(tmp_path), {"step": 1, "loss": 2.0})
    tb.ift_run_end(str(tmp_path), "completed", {})
    assert not (tmp_path / "tensorboard").exists()


def test_eval_steps_and_scalars():
    assert tb.eval_step("nowhere", "baseline") == 0 and tb.eval_step("nowhere", "step-12") == 12
    assert tb.scalars({"a": 1, "b": 0.5, "c": None, "d": True, "e": "cpu"}) == {"a": 1.0, "b": 0.5}


def test_a_resumed_run_shows_each_step_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """After a resume from step 2 the steps 3 and 4 are logged again; TensorBoard keeps the new ones only."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("IFT_TENSORBOARD", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    run_dir = str(tmp_path)
    tb.ift_run_start(run_dir, {"run": {}})
    for step in (1, 2, 3, 4):  # killed after step 4, last checkpoint at step 2
        tb.ift_step_end(run_dir, {"step": step, "loss": float(step)})
    tb.ift_run_end(run_dir, "failed", {})
    tb.ift_run_start(run_dir, {"run": {}})
    for step in (3, 4, 5):
        tb.ift_step_end(run_dir, {"step": step, "loss": 10.0 + step})
    tb.ift_run_end(run_dir, "completed", {})
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 13.0),
        (4, 14.0),
        (5, 15.0),
    ]
