"""The wheel holds every subpackage and template under the ``ift`` name, and nothing called ``core``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contents(tmp_path: Path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("ift-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"ift/{p.relative_to(ROOT / 'core').as_posix()}" for p in (ROOT / "core").rglob("*.py")}
    expected |= {
        f"ift/builtin_plugins/{p.relative_to(ROOT / 'builtin_plugins').as_posix()}"
        for p in (ROOT / "builtin_plugins").rglob("*")
        if p.suffix in (".py", ".jinja")
    }
    assert expected <= names, sorted(expected - names)
    assert "ift/py.typed" in names
    assert not any(n.startswith(("core/", "builtin_plugins/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ift = ift.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
