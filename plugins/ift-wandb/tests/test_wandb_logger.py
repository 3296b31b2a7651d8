"""ift-wandb in wandb's offline mode: a tiny ift run through the plugin host, then the offline run's
transaction log, read back with wandb's own reader (``wandb leet inspect --json``), holds every logged
training loss of events.jsonl and the evaluations."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ift.host import PluginHost
from ift.pipeline import Run
from ift.recipe import load_recipe
from ift_wandb import plugin

wandb = pytest.importorskip("wandb")

ROWS = [
    {"prompt": f"Uppercase: {w}", "completion": w.upper()}
    for w in ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen"]
]
RECIPE = """
[run]
name = "wandb-offline"
seed = 1

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
max_steps = 3
batch_size = 4
log_every = 1
max_length = 64

[eval]
fraction = 0.25
metrics = ["loss"]
"""


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-files"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "ift-tests")
    monkeypatch.setenv("IFT_TENSORBOARD", "0")
    monkeypatch.setenv("IFT_NO_CACHE", "1")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("IFT_WANDB", raising=False)
    (tmp_path / "wandb-files").mkdir()
    return tmp_path / "wandb-files"


def run_recipe(tmp_path: Path) -> Path:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "recipe.toml").write_text(RECIPE)
    host = PluginHost(entry_points=False)
    host.register(plugin, "wandb", distribution="ift-wandb", version="test")
    recipe = load_recipe(tmp_path / "recipe.toml", host)
    out = tmp_path / "run"
    Run(recipe, host, out, echo=lambda *a, **k: None, interactive=False).execute()
    return out


def read_offline_run(wandb_dir: Path) -> list[dict]:
    """Records of the one offline run under ``wandb_dir``, as wandb's CLI prints them."""
    files = list(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    cli = shutil.which("wandb")
    assert cli, "the wandb command is not on PATH"
    out = subprocess.run(
        [cli, "leet", "inspect", "--json", str(files[0])], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_offline_run_holds_the_logged_metrics(tmp_path: Path, offline: Path):
    out = run_recipe(tmp_path)
    records = read_offline_run(offline)
    history = [r["history"] for r in records if r["type"] == "history"]
    by_step = {h["step"]["num"]: h["item"] for h in history}
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if "loss" in e and "step" in e]
    assert [e["step"] for e in steps] == [1, 2, 3]
    for event in steps:
        item = by_step[event["step"]]
        for key in ("loss", "learning_rate", "tokens_per_s", "padding_fraction"):
            assert item[f"train/{key}"] == pytest.approx(event[key]), (event["step"], key)
    metrics = json.loads((out / "metrics.json").read_text())
    assert by_step[0]["eval/loss"] == pytest.approx(metrics["baseline"]["overall"]["loss"])
    assert by_step[3]["eval/loss"] == pytest.approx(metrics["final"]["overall"]["loss"])
    assert by_step[3]["eval/data/loss"] == pytest.approx(metrics["final"]["per_source"]["data"]["loss"])
    run_record = next(r["run"] for r in records if r["type"] == "run")
    assert run_record["project"] == "ift-tests" and run_record["display_name"] == "wandb-offline"
    assert run_record["config"]["update"]["trainer"]["max_steps"] == 3  # the resolved recipe
    assert (out / plugin.RUN_ID_FILE).read_text().strip() == run_record["run_id"]
    assert not plugin._runs


def test_turned_off_by_environment(tmp_path: Path, offline: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IFT_WANDB", "0")
    out = run_recipe(tmp_path)
    assert (out / "metrics.json").is_file()
    assert not list(offline.glob("wandb/offline-run-*")) and not (out / plugin.RUN_ID_FILE).exists()


def test_no_key_and_no_mode_is_a_warning_not_a_login_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "IFT_WANDB"):
        monkeypatch.delenv(name, raising=False)
    with pytest.warns(UserWarning, match="set WANDB_API_KEY"):
        plugin.ift_run_start(str(tmp_path), {"run": {"name": "x"}})
    assert not plugin._runs and not (tmp_path / "wandb").exists()


def test_enabled_and_scalars(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("IFT_WANDB", raising=False)
    assert plugin.enabled({}) and not plugin.enabled({"run": {"wandb": False}})
    assert plugin.scalars({"a": 1, "b": None, "c": True, "d": "x"}, "p/") == {"p/a": 1.0}


def test_other_ranks_do_not_log(tmp_path: Path, offline: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RANK", "1")
    plugin.ift_run_start(str(tmp_path), {"run": {"name": "x"}})
    assert not plugin._runs and not list(offline.iterdir())
