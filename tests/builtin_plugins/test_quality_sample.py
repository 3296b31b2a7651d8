"""The run's data report describes a seeded sample above quality.SAMPLE records, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins import quality


def records(n: int) -> list[ift.InstructionRecord]:
    return [
        ift.InstructionRecord(
            f"r{i}",
            "s",
            [ift.Message("user", f"Write item {i} about water"), ift.Message("assistant", f"answer number {i}")],
        )
        for i in range(n)
    ]


def test_large_sets_are_sampled_and_small_ones_are_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(quality, "SAMPLE", 5)
    quality.ift_data_prepared(str(tmp_path), records(12), [])
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["records"] == 5 and report["sampled_from"] == 12
    again = tmp_path / "again"
    again.mkdir()
    quality.ift_data_prepared(str(again), records(12), [])
    assert (again / "data_report.json").read_text() == (tmp_path / "data_report.json").read_text()  # seeded
    small = tmp_path / "small"
    small.mkdir()
    quality.ift_data_prepared(str(small), records(4), [])
    report = json.loads((small / "data_report.json").read_text())
    assert report["records"] == 4 and "sampled_from" not in report
