"""Exact resume: a run killed with SIGKILL at any point and resumed ends bitwise identical to the same run
uninterrupted (weights, optimizer state, per-step losses). Real subprocesses, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROWS = [
    {"prompt": f"Spell {w}", "completion": " ".join(w)}
    for w in [
        "cat",
        "dog",
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
        "gum",
        "hat",
        "ink",
        "kit",
        "log",
        "mud",
        "nut",
        "oak",
        "pig",
        "rat",
        "sea",
        "tin",
        "urn",
        "vet",
        "web",
        "axe",
        "bee",
        "cow",
        "den",
        "eel",
        "fox",
        "gnu",
    ]
]

RECIPE = """
[run]
seed = 3

[[data]]
source = "jsonl"
path = "data.jsonl"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = { model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2 }

[trainer]
epochs = 2
batch_size = 4
gradient_accumulation_steps = 2
learning_rate = 1e-2
log_every = 1
save_every = 1
keep_last = 3

[eval]
fraction = 0.1
metrics = ["loss"]
baseline = false
"""
# 36 training rows, batches of 4, 2 batches per step: 5 steps per epoch (the 5th takes the 9th batch alone),
# 10 steps in all.


def ift(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ift.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def losses(run: Path) -> list[tuple[int, float]]:
    return [
        (e["step"], e["loss"]) for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()) if "step" in e
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("resume")
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (work / "r.toml").write_text(RECIPE)
    return work


@pytest.fixture(scope="module")
def reference(workdir: Path) -> Path:
    result = ift(["run", "r.toml", "-o", "reference"], workdir)
    assert result.returncode == 0, result.stderr
    return workdir / "reference"


@pytest.mark.parametrize(
    "fault",
    ["micro-3-1", "step-4", "step-5", "checkpoint-write-7"],
    ids=["inside-accumulation-window", "mid-epoch", "epoch-boundary", "during-checkpoint-write"],
)
def test_killed_run_resumes_bitwise_identical(workdir: Path, reference: Path, fault: str):
    out = f"killed-{fault}"
    killed = ift(["run", "r.toml", "-o", out], workdir, IFT_FAULT=fault)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((workdir / out / "status.json").read_text())["status"] == "running"  # never "completed"
    assert not (workdir / out / "metrics.json").exists()
    resumed = ift(["run", "r.toml", "-o", out, "--resume"], workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-" in resumed.stderr + resumed.stdout
    run = workdir / out
    assert losses(run) == losses(reference)  # every step logged once, same values to the last bit
    assert [s for s, _ in losses(run)] == list(range(1, 11))
    for name in (
        "model/model.safetensors",
        "checkpoints/step-00000009/weights.safetensors",
        "checkpoints/step-00000009/optimizer.safetensors",
    ):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    if fault.startswith("checkpoint-write"):  # the unfinished write was set aside, not trusted or deleted
        assert [p.name.split(".tmp-")[0] for p in (run / "checkpoints").glob("broken-*")] == ["broken-step-00000007"]
        assert "set aside" in resumed.stderr
    assert (
        json.loads((run / "metrics.json").read_text())["final"]
        == json.loads((reference / "metrics.json").read_text())["final"]
    )


def test_resuming_a_finished_run_is_a_no_op(workdir: Path, reference: Path):
    before = (reference / "model" / "model.safetensors").stat().st_mtime_ns
    result = ift(["run", "r.toml", "-o", "reference", "--resume"], workdir)
    assert result.returncode == 0 and "already completed; nothing to resume" in result.stdout
    assert (reference / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_resume_with_a_changed_recipe_lists_the_changes(workdir: Path):
    out = "changed"
    assert ift(["run", "r.toml", "-o", out], workdir, IFT_FAULT="step-3").returncode == -signal.SIGKILL
    result = ift(
        ["run", "r.toml", "-o", out, "--resume", "--set", "trainer.learning_rate=0.5", "--set", "trainer.log_every=2"],
        workdir,
    )
    assert result.returncode == 2
    assert "the run changed since step-00000003: recipe key trainer.learning_rate: 0.01 -> 0.5" in result.stderr
    assert "log_every" not in result.stderr  # a safe change is allowed


def test_broken_checkpoints_are_set_aside_and_an_older_one_used(workdir: Path, reference: Path):
    out = "broken"
    assert ift(["run", "r.toml", "-o", out], workdir, IFT_FAULT="step-6").returncode == -signal.SIGKILL
    newest = workdir / out / "checkpoints" / "step-00000006"
    with (newest / "weights.safetensors").open("r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\xff\xff\xff\xff")
    explicit = ift(["run", "r.toml", "-o", out, "--resume", str(newest)], workdir)
    assert explicit.returncode == 5
    assert "weights.safetensors does not match its size/sha256" in explicit.stderr
    result = ift(["run", "r.toml", "-o", out, "--resume"], workdir)
    assert result.returncode == 0, result.stderr
    assert "set aside as broken-step-00000006" in result.stderr
    assert (workdir / out / "checkpoints" / "broken-step-00000006").is_dir()
    assert losses(workdir / out) == losses(reference)


def test_sigterm_saves_a_checkpoint_and_exits_for_requeue(workdir: Path, reference: Path):
    (workdir / "slow.toml").write_text(
        RECIPE.replace("epochs = 2", "epochs = 400").replace("save_every = 1", "save_every = 1000")
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "ift.cli", "run", "slow.toml", "-o", "term"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events = workdir / "term" / "events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (events.is_file() and events.read_text().count("\n") >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 75, err
    status = json.loads((workdir / "term" / "status.json").read_text())
    assert status["status"] == "interrupted" and "checkpoint saved" in status["error"]
    saved = list((workdir / "term" / "checkpoints").glob("step-*"))
    assert len(saved) == 1


def tensorboard_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"))
    accumulator.Reload()
    return [e.step for e in accumulator.Scalars(tag)]


@pytest.fixture(scope="module")
def sampled(workdir: Path) -> str:
    """A recipe that generates (baseline and final samples) and checkpoints only every third step."""
    (workdir / "sampled.toml").write_text(
        RECIPE.replace("save_every = 1", "save_every = 3")
        .replace('metrics = ["loss"]', 'metrics = ["loss", "exact_match"]\nmax_new_tokens = 3\nsamples = 2')
        .replace("baseline = false", "baseline = true")
    )
    return "sampled.toml"


@pytest.mark.parametrize("fault", ["step-2", "step-4"], ids=["before-first-checkpoint", "after-a-checkpoint"])
def test_a_resumed_run_logs_each_step_once_and_keeps_earlier_generations(workdir: Path, sampled: str, fault: str):
    out = f"sampled-{fault}"
    assert ift(["run", sampled, "-o", out], workdir, IFT_FAULT=fault).returncode == -signal.SIGKILL
    resumed = ift(["run", sampled, "-o", out, "--resume"], workdir)
    assert resumed.returncode == 0, resumed.stderr
    run = workdir / out
    assert [s for s, _ in losses(run)] == list(range(1, 11))  # the steps logged before the kill appear once
    assert tensorboard_steps(run, "train/loss") == list(range(1, 11))
    assert tensorboard_steps(run, "eval/loss") == [0, 10]  # the baseline once, the final once
    metrics = json.loads((run / "metrics.json").read_text())
    assert [sorted(row) for row in metrics["samples"]] == [
        ["baseline", "final", "id", "prompt", "reference", "source"]
    ] * 2
    assert all(isinstance(row["baseline"], str) for row in metrics["samples"])
    if fault == "step-4":  # the baseline was not recomputed, its generations came back from the run directory
        assert "evaluating baseline" not in resumed.stdout + resumed.stderr
        first = json.loads((workdir / "sampled-step-2" / "metrics.json").read_text())
        assert [r["baseline"] for r in metrics["samples"]] == [r["baseline"] for r in first["samples"]]
    # training time counts the time trained before the kill too: the last step's clock runs on from there
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    elapsed = [e["elapsed_s"] for e in events if "step" in e]
    assert elapsed == sorted(elapsed)
    assert metrics["train"]["train_seconds"] >= elapsed[-1] - 0.5
