"""Canary secrets in the environment never reach the run directory, logs or error output: through a run,
a kill and resume, and a failure."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .test_resume import RECIPE, ROWS, ift

pytestmark = pytest.mark.slow

CANARIES = {
    "HF_TOKEN": "hf_CANARYcanaryCANARYcanaryCANARY0001",
    "WANDB_API_KEY": "CANARY-wandb-0002",
    "HUGGING_FACE_HUB_TOKEN": "hf_CANARYcanaryCANARYcanaryCANARY0003",
    "OPENAI_API_KEY": "sk-CANARY0004",
    # credentials inside URLs (HF_HUB_OFFLINE keeps the hub unasked; tests/e2e/test_url_credentials.py asks it)
    "HF_ENDPOINT": "https://hfuser:CANARY-url-0005@127.0.0.1:9",
    "HTTPS_PROXY": "http://u:CANARY-url-0006@127.0.0.1:9",
    "DATABASE_URL": "postgresql://admin:CANARY-url-0007@127.0.0.1:9/db",
}


def test_canaries_never_written(tmp_path: Path):
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "r.toml").write_text(RECIPE)
    outputs = []
    killed = ift(["run", "r.toml", "-o", "run"], tmp_path, IFT_FAULT="step-3", **CANARIES)
    assert killed.returncode == -signal.SIGKILL
    resumed = ift(["run", "r.toml", "-o", "run", "--resume"], tmp_path, **CANARIES)
    assert resumed.returncode == 0, resumed.stderr
    failed = ift(
        ["run", "r.toml", "-o", "failed", "--set", "trainer.learning_rate=1e30", "--set", "trainer.max_grad_norm=1e30"],
        tmp_path,
        **CANARIES,
    )
    assert failed.returncode == 5
    outputs += [killed.stdout, killed.stderr, resumed.stdout, resumed.stderr, failed.stdout, failed.stderr]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("data.jsonl", "r.toml")]
    assert any(p.name == "manifest.json" for p in files) and any(p.suffix == ".safetensors" for p in files)
    for secret in CANARIES.values():
        assert not any(secret in text for text in outputs)
        leaked = [p for p in files if secret.encode() in p.read_bytes()]
        assert leaked == []
