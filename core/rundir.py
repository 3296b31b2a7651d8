"""The run directory: files are written atomically, and ``status.json`` says whether the run finished.

A run that fails leaves ``status.json`` with ``"status": "failed"`` and the error, no ``metrics.json`` and
no ``model/``: nothing half-written is presented as a finished result.

One process at a time: the main process holds an exclusive ``flock`` on ``<run dir>/.lock`` for the run's whole
life (from before ``--overwrite`` clears the folder to the last file written). The kernel releases it when the
holder exits or dies, so a killed run never leaves a stale lock; the file keeps the holder's pid, host and start
time for the refusal message. Under torchrun only global rank 0 takes it: a second launch's rank 0 is refused,
and torchrun stops that launch's other ranks.

What describes the run rather than its results (``status.json``, ``events.jsonl``, ``manifest.json``, the lock's
command line) passes through :func:`ift.redact.redact_value`: a URL's credentials or a token-shaped string in an
error, an event or a command line is written masked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ift.errors import RunDirectoryInUse
from ift.redact import redact_value

LOCK_FILE = ".lock"
#: Files written through :meth:`RunDirectory.write_json` whose strings are masked (results such as metrics.json
#: and samples.json are the model's own text and are written as they are).
REDACTED_FILES = frozenset({"manifest.json", "status.json"})
_held: dict[Path, tuple[int, int]] = {}  # run directory -> (descriptor holding its lock, nesting depth)


def _acquire(path: Path) -> None:
    key = path.resolve()
    if key in _held:  # this process holds it already (the CLI, then the run directory itself)
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform: no protection, as before
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirectoryInUse(
            f"{path} is in use by another ift process ({_describe_holder(path / LOCK_FILE)}); "
            "wait for it to end, or choose another --output-dir"
        ) from None
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "command": redact_value(sys.argv),
        "torchelastic_run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)
    _held[key] = (fd, 1)


def _release(path: Path) -> None:
    key = path.resolve()
    if key not in _held:
        return
    fd, depth = _held.pop(key)
    if depth > 1:
        _held[key] = (fd, depth - 1)
    else:
        os.close(fd)  # closing the descriptor releases the flock; the file stays (unlinking it would race)


def _describe_holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        started = dt.datetime.fromtimestamp(float(info["started"]), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        command = " ".join(map(str, info.get("command") or []))
        return f"pid {info['pid']} on {info['host']}, started {started}" + (f": {command}" if command else "")
    except (OSError, ValueError, KeyError, TypeError):
        return "it has not written its pid yet"


@contextlib.contextmanager
def hold_run_directory(path: Path | str, *, enabled: bool = True, create: bool = True) -> Iterator[None]:
    """Hold ``path``'s lock for the block (see the module docstring); raises :class:`~ift.errors.RunDirectoryInUse`
    naming the other process. ``create=False``: a folder that does not exist is not created (nor locked)."""
    path = Path(path)
    if not enabled or (not create and not path.is_dir()):
        yield
        return
    _acquire(path)
    try:
        yield
    finally:
        _release(path)


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
            _acquire(path)  # released by close()
            self._events = (path / "events.jsonl").open("a", encoding="utf-8")
            self.status("running")

    def status(self, status: str, **extra: Any) -> None:
        if self.enabled:
            write_json(
                self.path / "status.json",
                redact_value({"status": status, "started": self.started, "updated": time.time(), **extra}),
            )

    def write_text(self, name: str, text: str) -> None:
        if self.enabled:
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path / name, text)

    def write_json(self, name: str, data: Any) -> None:
        if self.enabled:
            write_json(self.path / name, redact_value(data) if name in REDACTED_FILES else data)

    def event(self, event: dict[str, Any]) -> None:
        if self.enabled:
            self._events.write(json.dumps(redact_value(event)) + "\n")
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
            _release(self.path)


def prepare_output_dir(path: Path, *, overwrite: bool) -> Path:
    """Refuse to mix a new run into an existing one unless asked to replace it."""
    if path.exists() and any(p.name != LOCK_FILE for p in path.iterdir()):
        if not overwrite:
            from ift.errors import RecipeError

            raise RecipeError(
                f"output directory {path} already exists and is not empty; choose another "
                "--output-dir or pass --overwrite"
            )
        for child in path.iterdir():
            if child.name == LOCK_FILE:  # this process's lock (see hold_run_directory): kept, still held
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    return path
