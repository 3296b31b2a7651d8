"""The run directory: files are written atomically, and ``status.json`` says whether the run finished.

A run that fails leaves ``status.json`` with ``"status": "failed"`` and the error, no ``metrics.json`` and
no ``model/``: nothing half-written is presented as a finished result.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class RunDirectory:
    """One run's output folder. Only the main process writes."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.started = time.time()
        if enabled:
            path.mkdir(parents=True, exist_ok=True)
            self._events = (path / "events.jsonl").open("a", encoding="utf-8")
            self.status("running")

    def status(self, status: str, **extra: Any) -> None:
        if self.enabled:
            write_json(self.path / "status.json", {"status": status, "started": self.started,
                                                   "updated": time.time(), **extra})

    def write_text(self, name: str, text: str) -> None:
        if self.enabled:
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path / name, text)

    def write_json(self, name: str, data: Any) -> None:
        if self.enabled:
            write_json(self.path / name, data)

    def event(self, event: dict[str, Any]) -> None:
        if self.enabled:
            self._events.write(json.dumps(event) + "\n")
            self._events.flush()

    def save_dir(self, name: str, writer: Callable[[Path], None]) -> None:
        """Write a folder through ``writer`` into a temporary sibling, then rename it into place."""
        if not self.enabled:
            return
        final = self.path / name
        tmp = self.path / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        writer(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def close(self) -> None:
        if self.enabled:
            self._events.close()


def prepare_output_dir(path: Path, *, overwrite: bool) -> Path:
    """Refuse to mix a new run into an existing one unless asked to replace it."""
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            from ift.errors import RecipeError

            raise RecipeError(f"output directory {path} already exists and is not empty; choose another "
                              "--output-dir or pass --overwrite")
        shutil.rmtree(path)
    return path
