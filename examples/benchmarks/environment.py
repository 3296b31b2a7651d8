"""The benchmark's environment (``run.py``): its own virtual environment with TRL beside this checkout of ift,
and what is recorded about the machine, the library versions and the commit with every result."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRL_VERSION = "1.16.0"
TORCH_SPEC = "torch==2.13.0"


def ensure_venv(venv: Path) -> Path:
    """Create the benchmark environment once: torch, this checkout of ift (editable), then TRL with
    torch / transformers / accelerate / datasets / tokenizers pinned to what ift resolved, so installing TRL
    can never upgrade them on one side only."""
    python = venv / "bin" / "python"
    marker = venv / ".ift-bench-ready"
    if marker.is_file():
        return python
    print(f"setting up {venv} (once; a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TORCH_SPEC], check=True)
    subprocess.run([*pip, "-e", str(REPO)], check=True)
    pinned = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import version as v; "
            "print('\\n'.join(f'{p}=={v(p)}' for p in ('torch', 'transformers', 'accelerate', 'datasets', "
            "'tokenizers')))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    constraints = venv / "constraints.txt"
    constraints.write_text(pinned)
    subprocess.run([*pip, f"trl=={TRL_VERSION}", "-c", str(constraints)], check=True)
    marker.write_text(pinned)
    return python


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("ift", "trl", "torch", "transformers", "accelerate", "datasets", "tokenizers", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main_venv_versions() -> dict[str, str] | None:
    """What the project's own environment has, to show whether the benchmark environment differs."""
    python = REPO / ".venv" / "bin" / "python"
    if not python.is_file():
        return None
    code = (
        "from importlib.metadata import version as v; import json; "
        "print(json.dumps({p: v(p) for p in ('torch', 'transformers', 'accelerate', 'datasets')}))"
    )
    try:
        return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def git_state() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
