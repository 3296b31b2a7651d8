"""The plugin distributions plugins/ift-sql and plugins/ift-wandb installed the way a user installs them,
found through the ``ift`` entry-point group in a fresh process: a recipe trains on records read from a
SQLite database file with the ``sql`` source, and (where wandb is installed) logs an offline W&B run."""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
WORDS = ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen", "rug", "sky"]
RECIPE = """
[run]
name = "from-sql"

[[data]]
source = "sql"
url_env = "SUPPORT_DB_URL"
query = "SELECT ticket_id, question, answer FROM tickets WHERE approved = 1"
id_column = "ticket_id"
columns = { prompt = "question", completion = "answer" }

[template]
name = "alpaca"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = { model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 64 }

[trainer]
name = "sft"
max_steps = 2
batch_size = 4
max_length = 64

[eval]
fraction = 0.2
metrics = ["loss"]
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "plugins" / "ift-sql"),
            str(ROOT / "plugins" / "ift-wandb"),
        ],
        check=True,
        timeout=300,
    )
    return target


def ift(args: list[str], site: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ift.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", **env},
        timeout=300,
    )


def test_recipe_trains_on_a_sqlite_table(installed: Path, tmp_path: Path):
    db = tmp_path / "support.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tickets (ticket_id INTEGER PRIMARY KEY, question TEXT, answer TEXT, approved INT)")
        conn.executemany(
            "INSERT INTO tickets VALUES (?, ?, ?, ?)",
            [(i, f"Uppercase: {w}", w.upper(), int(i != 3)) for i, w in enumerate(WORDS)],
        )
    (tmp_path / "recipe.toml").write_text(RECIPE)
    wandb_dir = tmp_path / "wandb-files"
    wandb_dir.mkdir()
    env = {
        "SUPPORT_DB_URL": f"sqlite:///{db}",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_SILENT": "true",
        "IFT_NO_CACHE": "1",
    }

    listed = ift(["plugins", "--json"], installed, tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert plugins["sql"]["distribution"] == "ift-sql" and plugins["sql"]["registered"] == {"source": ["sql"]}
    assert plugins["wandb"]["distribution"] == "ift-wandb"

    result = ift(["run", "recipe.toml", "--output-dir", "run"], installed, tmp_path, **env)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    (source,) = manifest["data"]["sources"]
    assert source["source"] == "sql" and source["records"] == len(WORDS) - 1  # one row is not approved
    assert source["fingerprint"].startswith("sha256:")
    assert "sqlite:///" not in (run / "resolved.json").read_text()  # the URL stayed in the environment
    assert json.loads((run / "metrics.json").read_text())["final"]["overall"]["loss"] > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    if importlib.util.find_spec("wandb") is not None:
        assert len(list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))) == 1

    env["SUPPORT_DB_URL"] = ""
    missing = ift(["run", "recipe.toml", "--output-dir", "run2"], installed, tmp_path, **env)
    assert missing.returncode == 3  # a data error
    assert "environment variable SUPPORT_DB_URL is not set" in missing.stderr
