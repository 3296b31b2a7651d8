"""Sample data for tests: a few instruction records of different shapes, and files written from Python
values (a list of dicts becomes JSON Lines)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ift.records import InstructionRecord, Message

#: What :func:`write_files` accepts for one file: text, bytes, or rows (a list of dicts, written as JSON Lines).
FileContent = str | bytes | list[Mapping[str, Any]]

_WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "maple",
    "tiger",
    "lemon",
    "piano",
    "coral",
    "amber",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "grove",
    "harbor",
]


def sample_rows(n: int = 8) -> list[dict[str, Any]]:
    """Alpaca-style rows with distinct, deterministic texts (``Uppercase: apple`` -> ``APPLE``)."""
    rows = []
    for i in range(n):
        word = _WORDS[i % len(_WORDS)] + ("" if i < len(_WORDS) else str(i // len(_WORDS)))
        rows.append({"id": f"row-{i}", "instruction": f"Uppercase: {word}", "input": "", "output": word.upper()})
    return rows


def sample_records(n: int = 4, *, source: str = "sample") -> list[InstructionRecord]:
    """Records covering the shapes components must handle: single turn, with a system prompt, multi-turn,
    and a labelled classification record with choices. More than four repeats the single-turn shape."""
    records = [
        InstructionRecord("sample-0", source, [Message("user", "Uppercase: apple"), Message("assistant", "APPLE")]),
        InstructionRecord(
            "sample-1",
            source,
            [
                Message("system", "You answer in one word."),
                Message("user", "What colour is the sky on a clear day?"),
                Message("assistant", "Blue"),
            ],
        ),
        InstructionRecord(
            "sample-2",
            source,
            [
                Message("user", "Name a fruit."),
                Message("assistant", "Pear."),
                Message("user", "Another one?"),
                Message("assistant", "Plum."),
            ],
            task="chat",
        ),
        InstructionRecord(
            "sample-3",
            source,
            [Message("user", "Is 'I love it' positive or negative?"), Message("assistant", "positive")],
            task="sentiment",
            label="positive",
            choices=["positive", "negative"],
        ),
    ]
    for row in sample_rows(max(0, n - len(records)) + 4)[4:]:
        if len(records) >= n:
            break
        records.append(
            InstructionRecord(
                f"sample-{len(records)}",
                source,
                [Message("user", row["instruction"]), Message("assistant", row["output"])],
            )
        )
    return records[:n]


def write_files(folder: Path, files: Mapping[str, FileContent]) -> dict[str, Path]:
    """Write ``files`` (relative path -> content) under ``folder``; returns the paths written."""
    written = {}
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text(
                "".join(json.dumps(dict(row), ensure_ascii=False) + "\n" for row in content), encoding="utf-8"
            )
        written[name] = path
    return written
