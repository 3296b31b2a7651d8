"""Under torchrun on one machine the ranks other than 0 map rank 0's prepared data from the cache instead of
preparing (and holding) a copy of their own."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import ift
from ift.cache import Prepared, PreparedCache
from ift.preparation import cached_entry


def sample() -> Prepared:
    examples = [ift.EncodedExample([5, 6, 7], [-100, 6, 7], "a", "r1"), ift.EncodedExample([9], [9], "b", "r2")]
    return Prepared(examples, [], [], {"split": {"train": 2}})


def as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int = 2, local_world: int = 2) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))


def test_a_later_rank_waits_for_rank_0s_entry_and_maps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    as_rank(monkeypatch, 1)
    cache = PreparedCache(tmp_path)
    writer = threading.Timer(0.5, lambda: cache.store("k", sample()))
    writer.start()
    try:
        hit = cached_entry(cache, "k")
    finally:
        writer.join()
    assert hit is not None and list(hit.train) == sample().train
    assert type(hit.train).__name__ == "ExampleTable"  # mapped from the entry's files, not a copy in lists


def test_rank_0_and_ranks_on_several_machines_never_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IFT_PREPARE_WAIT_SECONDS", "30")
    cache = PreparedCache(tmp_path)
    for rank, world, local_world in ((0, 2, 2), (1, 4, 2)):
        as_rank(monkeypatch, rank, world, local_world)
        assert cached_entry(cache, "k") is None  # at once: rank 0 prepares; another machine's rank too


def test_a_rank_that_waits_too_long_prepares_its_own_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    as_rank(monkeypatch, 1)
    monkeypatch.setenv("IFT_PREPARE_WAIT_SECONDS", "0.2")
    with pytest.warns(UserWarning, match=r"rank 1: rank 0's prepared data did not appear .* within 0.2 s"):
        assert cached_entry(PreparedCache(tmp_path), "k") is None


def test_a_damaged_entry_is_not_mapped_while_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    as_rank(monkeypatch, 1)
    monkeypatch.setenv("IFT_PREPARE_WAIT_SECONDS", "0.5")
    cache = PreparedCache(tmp_path)
    entry = cache.store("k", sample())
    with (entry / "train" / "ids.bin").open("r+b") as handle:
        handle.write(b"\1\0\0\0")
    with pytest.warns(UserWarning, match="preparing this rank's own copy"):
        assert cached_entry(cache, "k") is None
