"""The trainers are written against the public API: ``ift.SFTTrainer`` and ``ift.SFTConfig`` (importable
without torch), nothing from ``ift.<module>`` or ``ift.builtin_plugins``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ift
from ift.builtin_plugins import sft
from ift.builtin_plugins.trainers import adversarial, continual, distill

ARITH = Path(__file__).resolve().parents[3] / "plugins" / "ift-arith" / "src" / "ift_arith" / "plugin.py"


def test_sft_trainer_and_config_are_public_and_lazy():
    code = (
        "import sys, ift\nassert 'torch' not in sys.modules\nassert 'ift.builtin_plugins.sft' not in sys.modules\n"
        "ift.SFTTrainer, ift.SFTConfig\nassert 'torch' not in sys.modules\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    assert ift.SFTTrainer is sft.SFTTrainer and ift.SFTConfig is sft.SFTConfig
    assert {"SFTTrainer", "SFTConfig"} <= set(ift.__all__) <= set(dir(ift))


def test_trainers_import_only_ift():
    for path in (Path(adversarial.__file__), Path(continual.__file__), Path(distill.__file__), ARITH):
        tree = ast.parse(path.read_text())
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "ift" in modules, path
        private = {
            m for m in modules if m.startswith("ift.") and not (path == ARITH and m == "ift.builtin_plugins.renderers")
        }
        assert not private, (path, private)
    for cls in (adversarial.AdversarialTrainer, continual.ContinualTrainer, distill.DistillTrainer):
        assert issubclass(cls, ift.SFTTrainer) and issubclass(cls.Config, ift.SFTConfig)
