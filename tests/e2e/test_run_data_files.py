"""Every run keeps the records it trained and evaluated on (``data/train.jsonl``, ``data/eval.jsonl``), also when
its prepared data came from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.cli import main

from .test_run import ROWS, write_recipe

pytestmark = pytest.mark.slow


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_its_train_and_eval_records_also_on_a_cache_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IFT_CACHE_DIR", str(tmp_path / "cache"))  # a cache of its own: the first run is a miss
    recipe = write_recipe(tmp_path)
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "a"), "--set", "trainer.max_steps=1"]) == 0
    train, held = _rows(tmp_path / "a/data/train.jsonl"), _rows(tmp_path / "a/data/eval.jsonl")
    manifest = json.loads((tmp_path / "a/manifest.json").read_text())
    assert manifest["cache"]["hit"] is False
    assert len(train) == manifest["data"]["split"]["train"] and len(held) == manifest["data"]["split"]["eval"]
    outputs = {r["messages"][-1]["content"] for r in train + held}
    assert outputs == {r["output"] for r in ROWS}  # every row is in exactly one of the two files
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    assert set(train[0]) == {"id", "source", "task", "label", "choices", "metadata", "messages"}

    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "b"), "--set", "trainer.max_steps=1"]) == 0
    assert json.loads((tmp_path / "b/manifest.json").read_text())["cache"]["hit"] is True
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "b/data" / name).read_bytes() == (tmp_path / "a/data" / name).read_bytes()
