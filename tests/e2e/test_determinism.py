"""Same recipe and seed: bitwise the same run. The data seed moves the data order and nothing else. Two
processes under torchrun train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ift.cli import main

pytestmark = pytest.mark.slow

RECIPE = """
[run]
seed = 5

[[data]]
source = "jsonl"
path = "train.jsonl"
split = "train"

[[data]]
source = "jsonl"
path = "held.jsonl"
split = "eval"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = { model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2 }

[trainer]
epochs = 2
batch_size = 8
batching = "padding"
learning_rate = 1e-2
log_every = 1

[eval]
metrics = ["loss"]
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("det")
    words = [
        "amber",
        "basil",
        "cedar",
        "delta",
        "ember",
        "fjord",
        "grape",
        "hazel",
        "igloo",
        "jolly",
        "koala",
        "lemon",
        "mango",
        "nylon",
        "olive",
        "pearl",
    ]
    (work / "train.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"Reverse {w}", "completion": w[::-1] * (i % 3 + 1)}) + "\n"
            for i, w in enumerate(words)
        )
    )
    (work / "held.jsonl").write_text(
        "".join(
            json.dumps({"prompt": f"Reverse {w}", "completion": w[::-1]}) + "\n"
            for w in ["quilt", "raven", "sugar", "tulip"]
        )
    )
    (work / "r.toml").write_text(RECIPE)
    return work


def run(work: Path, name: str, *sets: str) -> Path:
    args = ["run", str(work / "r.toml"), "-o", str(work / name), "--overwrite"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return work / name


def log(run_dir: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())]


def test_same_seed_twice_is_bitwise_identical(work: Path):
    a, b = run(work, "a"), run(work, "b", "run.cache=false")
    assert log(a) == log(b)
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()


def test_data_seed_changes_the_order_and_not_the_model(work: Path):
    a, c = run(work, "a2"), run(work, "c", "run.data_seed=99")
    metrics_a = json.loads((a / "metrics.json").read_text())
    metrics_c = json.loads((c / "metrics.json").read_text())
    assert metrics_a["baseline"] == metrics_c["baseline"]  # same initial weights
    assert log(a) != log(c)  # other batches


def test_two_processes_match_one_process_with_the_same_global_batch(work: Path):
    single = run(work, "single")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    result = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "-m",
            "ift.cli",
            "run",
            str(work / "r.toml"),
            "-o",
            str(work / "ddp"),
            "--set",
            "trainer.batch_size=4",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = work / "ddp"
    events = [json.loads(line) for line in (ddp / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [1, 2, 3, 4]  # 16 rows, 2 x 4 per step: 2 steps per epoch
    assert sum(e["tokens"] for e in events) == sum(
        e["tokens"] for e in map(json.loads, (single / "events.jsonl").read_text().splitlines())
    )
    assert log(ddp) == pytest.approx(log(single), rel=1e-5)
    final = [json.loads((d / "metrics.json").read_text())["final"]["overall"]["loss"] for d in (single, ddp)]
    assert final[1] == pytest.approx(final[0], rel=1e-5)


def test_two_process_run_killed_and_resumed_is_bitwise_identical(work: Path):
    (work / "ckpt.toml").write_text(RECIPE.replace("log_every = 1", "log_every = 1\nsave_every = 1"))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(out: str, *extra: str, fault: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                torchrun,
                "--nproc_per_node",
                "2",
                "-m",
                "ift.cli",
                "run",
                str(work / "ckpt.toml"),
                "-o",
                str(work / out),
                "--set",
                "trainer.batch_size=4",
                *extra,
            ],
            capture_output=True,
            text=True,
            env={**env, "IFT_FAULT": fault},
            timeout=300,
        )

    assert launch("ddp-ref").returncode == 0
    assert launch("ddp-killed", fault="step-3").returncode != 0
    checkpoints = sorted(p.name for p in (work / "ddp-killed" / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002", "step-00000003"]  # written once (rank 0), the older rotated away
    resumed = launch("ddp-killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert log(work / "ddp-killed") == log(work / "ddp-ref")
    assert (work / "ddp-killed" / "model" / "model.safetensors").read_bytes() == (
        work / "ddp-ref" / "model" / "model.safetensors"
    ).read_bytes()
