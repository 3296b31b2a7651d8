"""Smoke tests of the ift-vs-TRL benchmark scripts (examples/benchmarks/): the synthetic data, the ift side
measured by the shared probe, and (where TRL is installed, as in the benchmark's own environment) the parity
check end to end on a few steps."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "examples" / "benchmarks"
TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


def _workload():
    spec = importlib.util.spec_from_file_location("bench_workload", BENCH / "workload.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_workload"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_synthetic_data_is_seeded_with_lognormal_and_constant_lengths():
    workload = _workload()
    rows = workload.make_rows("lognormal", 3000)
    assert rows == workload.make_rows("lognormal", 3000)
    lengths = [len(r["prompt"]) + len(r["completion"]) + 1 for r in rows]  # + EOS; byte-level tokens
    assert max(lengths) <= 1024
    logs = [math.log(n) for n in lengths]
    assert statistics.pstdev(logs) > 0.5  # a wide, right-skewed spread, not a uniform one
    assert statistics.mean(lengths) > statistics.median(lengths)
    assert all(r["prompt"].endswith("\n") and (r["prompt"] + r["completion"]).isascii() for r in rows)
    constant = workload.make_rows("constant", 100)
    assert len({len(r["prompt"]) + len(r["completion"]) for r in constant}) == 1


def _spec(tmp_path: Path, workload, rows: int, steps: int, batching: str, shuffle: bool) -> Path:
    data = workload.write_jsonl(workload.make_rows("lognormal", rows), tmp_path / "data.jsonl")
    model = workload.build_model_dir(tmp_path / "model", TINY)
    settings = workload.Settings(
        data="lognormal", ift_batching=batching, trl_mode="default", steps=steps, batch_size=4, shuffle=shuffle
    )
    spec = {
        "settings": settings.to_json(),
        "data_path": str(data),
        "model_dir": str(model),
        "pad_id": 256,
        "work_dir": str(tmp_path / "work"),
        "warmup": 1,
        "precision": "fp32",
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["length-grouped", "packing"])
def test_ift_child_counts_agree_with_ift_counters(tmp_path: Path, batching: str):
    workload = _workload()
    spec = _spec(tmp_path, workload, rows=64, steps=3, batching=batching, shuffle=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"), IFT_DISABLE_ENTRY_POINTS="1")
    out = subprocess.run(
        [sys.executable, str(BENCH / "child_ift.py"), str(spec), str(tmp_path / "result.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 3 and len(result["losses"]) == 3
    assert result["reported"]["batching"] == batching
    # ift's own counters (metrics.json) equal what the probe counted from the tensors that reached the model
    assert result["reported"]["tokens"] == result["real_tokens"] > 0
    assert result["reported"]["padding_fraction"] == pytest.approx(result["padding_fraction"], abs=1e-3)
    assert result["tokens_per_s"] > 0 and result["preprocess_s"] > 0 and result["peak_rss_mb"] > 0


@pytest.mark.slow
def test_parity_with_trl_passes_on_a_few_steps(tmp_path: Path):
    pytest.importorskip("trl", reason="TRL lives in the benchmark's own environment (examples/benchmarks/.venv)")
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--no-venv",
            "--rows",
            "200",
            "--steps",
            "4",
            "--pairs",
            "1",
            "--parity-steps",
            "3",
            "--only",
            "padding vs padding",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "parity passed" in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["parity"]["passed"] and all(s["rel_diff"] <= 1e-5 for s in results["parity"]["steps"])
    assert results["results"][0]["ift_counters_match"]
