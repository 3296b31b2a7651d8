"""A third-party PEFT method from plugins/ift-research, used by name: ``[model.peft] method = "loha"`` trains a
tiny run whose model folder plain peft loads, and the manifest names the method's plugin and version.

The plugin is taken from its installed distribution when there is one (the README's test command installs it),
else from its source folder, so the test runs either way; the entry-point test needs the installed one."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ift.host import PluginHost
from ift.testing import tiny_model_table

pytestmark = pytest.mark.slow

SOURCE = Path(__file__).resolve().parents[2] / "plugins" / "ift-research" / "src"
ROWS = [
    {"instruction": f"Uppercase: {w}", "input": "", "output": w.upper()}
    for w in ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen"]
]


def _installed() -> bool:
    try:
        importlib.metadata.distribution("ift-research")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def ift_plugins() -> dict[str, object]:
    if importlib.util.find_spec("ift_research") is None:
        sys.path.insert(0, str(SOURCE))  # not installed: the source folder (the module stays importable after)
    from ift_research import plugin

    return {"research": plugin}


def test_a_loha_run_saves_a_folder_plain_peft_loads(ift_run: Any, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = {
        "run": {"name": "loha", "seed": 3},
        "data": [{"source": "jsonl", "path": "data.jsonl"}],
        "model": tiny_model_table(peft={"method": "loha", "r": 4, "alpha": 8}),
        "trainer": {
            "name": "sft",
            "max_steps": 4,
            "batch_size": 4,
            "learning_rate": 5e-3,
            "log_every": 2,
            "max_length": 64,
        },
        "eval": {"fraction": 0.2, "metrics": ["loss"], "baseline": False},
    }
    run_dir = ift_run(recipe, files={"data.jsonl": ROWS})

    saved = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    assert (saved["peft_type"], saved["r"], saved["alpha"]) == ("LOHA", 4, 8)
    base = AutoModelForCausalLM.from_pretrained(run_dir / "model" / "base_model").eval()
    ids = torch.tensor([[65, 66, 67, 10, 68, 69]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.clone()
    model = PeftModel.from_pretrained(base, run_dir / "model").eval()
    hada = {n: p for n, p in model.named_parameters() if "hada_w" in n}
    assert hada, "plain peft did not load LoHa weights"
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
    assert not torch.allclose(tuned, base_logits), "the trained LoHa update changes nothing"

    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["model"]["peft"] == {
        "method": "loha",
        "r": 4,
        "alpha": 8,
        "rank_dropout": 0.0,
        "module_dropout": 0.0,
        "target_modules": "all-linear",
        "modules_to_save": None,
    }
    manifest = json.loads((run_dir / "manifest.json").read_text())
    described = manifest["model"]["peft_method"]
    assert (described["method"], described["plugin"]) == ("loha", "research")
    assert described["distribution"] in {p["distribution"] for p in manifest["plugins"]}
    assert "LoHa r=4, alpha=8" in manifest["model"]["summary"]


@pytest.mark.skipif(not _installed(), reason="ift-research is not installed (pip install ./plugins/ift-research)")
def test_the_installed_distribution_registers_loha_through_its_entry_point() -> None:
    host = PluginHost(entry_points=True)
    registered = host.get("peft_method", "loha")
    assert (registered.plugin, registered.distribution) == ("research", "ift-research")
    assert registered.version == importlib.metadata.version("ift-research")
    assert host.get("peft_method", "vera").plugin == "research"


def test_a_third_party_objective_trains_by_name(ift_run: Any) -> None:
    """``[trainer] name = "label-smoothing"``: the loop's keys and the objective's own in one table; with
    ``smoothing = 0`` the run logs the same losses as ``sft``, with 0.3 it trains a different objective."""

    def run(trainer: dict[str, Any]) -> list[dict[str, Any]]:
        recipe = {
            "run": {"seed": 3},
            "data": [{"source": "jsonl", "path": "data.jsonl"}],
            "model": tiny_model_table(),
            "trainer": {
                "max_steps": 3,
                "batch_size": 4,
                "learning_rate": 5e-3,
                "log_every": 1,
                "max_length": 64,
                "shuffle": False,
                "batching": "padding",
                **trainer,
            },
            "eval": {"fraction": 0.2, "metrics": ["loss"], "baseline": False},
        }
        run_dir = ift_run(recipe, files={"data.jsonl": ROWS})
        return [
            json.loads(line)
            for line in (run_dir / "events.jsonl").read_text().splitlines()
            if '"step"' in line and '"eval"' not in line
        ]

    plain = run({"name": "sft"})
    unsmoothed = run({"name": "label-smoothing", "smoothing": 0.0})
    smoothed = run({"name": "label-smoothing", "smoothing": 0.3})
    assert [e["loss"] for e in unsmoothed] == pytest.approx([e["loss"] for e in plain], rel=1e-4)
    assert [e["nll"] for e in unsmoothed] == pytest.approx([e["loss"] for e in plain], rel=1e-4)
    assert smoothed[0]["loss"] > smoothed[0]["nll"]  # the uniform part costs more than the target alone
    assert set(smoothed[0]["loss_by_source"]) == {"data"}
