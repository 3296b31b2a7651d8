"""The ``self-instruct`` builder's progress: an append-only JSON Lines file in its work folder.

Line kinds: ``header`` (format version and a hash of the settings that decide what is generated),
``candidate`` (one decided candidate: kept, or rejected with its reason) and ``round`` (a round is
finished). Each line is flushed and synced before the build goes on, so an interrupted build loses at most
the candidate being decided; a torn last line (the process killed mid-write) is cut off when the file is
opened again. Candidates are identified by (round, index), so a resumed round skips those already
decided and no record is ever written twice.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ift

VERSION = 1


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` while building, so that two processes using one work folder (the
    ranks of a ``torchrun`` job, two ``ift data build``) take turns: the second finds the state complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows has no flock; one build per work_dir at a time
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class BuildState:
    """Everything decided so far, loaded from (and appended to) ``path``."""

    def __init__(self, path: Path, settings: str) -> None:
        self.path = path
        self.settings = settings
        self.decided: dict[tuple[int, int], dict[str, Any]] = {}
        self.kept: list[dict[str, Any]] = []
        self.rejected: Counter[str] = Counter()
        self.rounds_done: set[int] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._load()
        else:
            self._append({"type": "header", "version": VERSION, "settings": settings})

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line: the process stopped while writing it
            with self.path.open("r+b") as handle:
                handle.truncate(end)
            data = data[:end]
        lines = data.decode("utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ift.DataError(
                    f"self-instruct state is corrupt: {exc.msg}", file=str(self.path), line=number
                ) from None
            kind = entry.get("type")
            if number == 1:
                self._check_header(entry)
            elif kind == "candidate":
                self._remember(entry)
            elif kind == "round":
                self.rounds_done.add(int(entry["round"]))
        if not lines:
            self._append({"type": "header", "version": VERSION, "settings": self.settings})

    def _check_header(self, entry: dict[str, Any]) -> None:
        if entry.get("type") != "header" or entry.get("version") != VERSION:
            raise ift.DataError(
                f"not a self-instruct state file (version {VERSION}); delete it or choose another work_dir",
                file=str(self.path),
            )
        if entry.get("settings") != self.settings:
            raise ift.DataError(
                "this work_dir holds a build made with other settings (seeds, model, prompts or filters "
                "changed); delete it to start over, or choose another work_dir",
                file=str(self.path),
            )

    def _remember(self, entry: dict[str, Any]) -> None:
        self.decided[(int(entry["round"]), int(entry["index"]))] = entry
        if entry["kept"]:
            self.kept.append(entry)
        else:
            self.rejected[entry["reason"]] += 1

    def _append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def record(self, entry: dict[str, Any]) -> None:
        """Persist one decided candidate (``round``, ``index``, ``kept``, ``reason``, texts, ...)."""
        key = (int(entry["round"]), int(entry["index"]))
        if key in self.decided:
            raise RuntimeError(f"candidate {key} is already decided")  # a bug: callers skip decided ones
        entry = {"type": "candidate", **entry}
        self._append(entry)
        self._remember(entry)

    def finish_round(self, round_index: int) -> None:
        self._append({"type": "round", "round": round_index})
        self.rounds_done.add(round_index)

    def stats(self) -> dict[str, Any]:
        """Counts for the build summary: rounds, candidates, kept, and rejections by reason."""
        return {
            "rounds": len(self.rounds_done),
            "candidates": len(self.decided),
            "kept": len(self.kept),
            "rejected": dict(sorted(self.rejected.items())),
        }
