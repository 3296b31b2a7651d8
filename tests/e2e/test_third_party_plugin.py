"""Third-party plugins found through the ``ift`` entry-point group, in fresh processes: the example
distribution in plugins/ift-arith is installed and used by name from a recipe; a broken distribution is
reported and does not stop the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def ift(args: list[str], pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ift.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


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
            str(ROOT / "plugins" / "ift-arith"),
        ],
        check=True,
        timeout=300,
    )
    return target


def test_plugins_lists_the_installed_distribution(installed: Path, tmp_path: Path):
    result = ift(["plugins", "--json"], installed, tmp_path)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert plugins["arith"]["distribution"] == "ift-arith"
    assert plugins["arith"]["origin"] == "entry-point"
    assert plugins["arith"]["registered"] == {
        "source": ["arithmetic"],
        "renderer": ["qa"],
        "metric": ["numeric_match"],
        "trainer": ["sft-smoothed"],
    }


def test_recipe_uses_plugin_components_by_name(installed: Path, tmp_path: Path):
    recipe = tmp_path / "arith.toml"
    recipe.write_text("""
[[data]]
source = "arithmetic"
n = 60
max_operand = 9

[template]
name = "qa"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = { model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, num_attention_heads = 2 }

[trainer]
name = "sft-smoothed"
label_smoothing = 0.1
max_steps = 3
batch_size = 8

[eval]
fraction = 0.1
metrics = ["loss", "numeric_match"]
max_new_tokens = 3
""")
    result = ift(["run", str(recipe), "--output-dir", str(tmp_path / "run")], installed, tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["final"]["overall"]["numeric_match"] <= 1.0
    resolved = json.loads((tmp_path / "run" / "resolved.json").read_text())
    assert resolved["trainer"]["label_smoothing"] == 0.1 and resolved["template"]["name"] == "qa"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert any(p["distribution"] == "ift-arith" for p in manifest["plugins"])


def make_broken_distribution(site: Path) -> None:
    (site / "ift_broken_plugin.py").write_text("raise ImportError('needs the missing package acme-db')\n")
    info = site / "ift_broken-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ift-broken\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[ift]\nbroken = ift_broken_plugin\n")


def test_broken_plugin_is_reported_and_others_still_load(tmp_path: Path):
    make_broken_distribution(tmp_path)
    result = ift(["plugins"], tmp_path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "FAILED broken  (ift-broken 0.3): ImportError: needs the missing package acme-db" in result.stdout
    assert "renderer: alpaca" in result.stdout


def test_recipe_naming_a_missing_component_points_at_the_broken_plugin(tmp_path: Path):
    make_broken_distribution(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[data]]\nsource = "acme-db"\nquery = "select 1"\n')
    result = ift(["validate", str(recipe)], tmp_path, tmp_path)
    assert result.returncode == 4  # the plugin error: fix the broken plugin first
    assert "unknown source 'acme-db'" in result.stderr
    assert "plugin 'broken' (ift-broken 0.3, entry point ift_broken_plugin) failed to load" in result.stderr
