"""Importing ift, building the plugin host and validating a recipe never import torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import ift


def _modules_after(code: str) -> set[str]:
    script = textwrap.dedent(code) + "\nimport sys\nprint(' '.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


def test_import_ift_does_not_import_torch() -> None:
    modules = _modules_after("import ift")
    assert "ift" in modules
    assert "torch" not in modules
    assert "transformers" not in modules


def test_recipe_validation_does_not_import_torch() -> None:
    modules = _modules_after("""
        from pathlib import Path
        from ift.host import PluginHost
        from ift.recipe import validate_recipe
        host = PluginHost(entry_points=False)
        recipe = validate_recipe(
            {"data": [{"source": "jsonl", "path": "train.jsonl"}],
             "model": {"adapter": "causal-lm", "tokenizer": "byte-level",
                       "from_config": {"model_type": "llama"}},
             "eval": {"metrics": ["loss", "exact_match", "rouge_l", "f1"]}},
            host, base_dir=Path("."))
        assert recipe.trainer.name == "sft"
    """)
    assert "ift.recipe" in modules and "ift.builtin_plugins.causal_lm" in modules
    assert "torch" not in modules


def test_public_api_is_exported() -> None:
    for name in ift.__all__:
        assert hasattr(ift, name), name
    assert issubclass(ift.RecipeError, ift.IftError)
    assert issubclass(ift.DataError, ift.IftError)
    assert issubclass(ift.PluginError, ift.IftError)
    assert issubclass(ift.RunError, ift.IftError)
