"""``ift.allocator``: on glibc, blocks freed after training-sized allocations go back to the system."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ift import allocator

PROGRAM = """
import ctypes, ctypes.util, os, sys
from ift.allocator import tune_for_training
tuned = tune_for_training(*[int(a) for a in sys.argv[1:]])
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
size = 4 << 20
libc.free(libc.malloc(2 * size))  # untuned glibc raises its mmap threshold above 4 MiB here
big, small = [], []
for _ in range(100):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    big.append(p)
    small.append(libc.malloc(200 << 10))  # from the untuned heap: pins it between the big blocks
before = rss()
for p in big:
    libc.free(p)
print(tuned, (before - rss()) >> 20)
"""


def released(tuning: str, *threshold: int) -> tuple[str, int]:
    env = dict(os.environ, IFT_MALLOC_TUNING=tuning)
    command = [sys.executable, "-c", PROGRAM, *map(str, threshold)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    tuned, mib = out.stdout.split()
    return tuned, int(mib)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_activation_sized_blocks_are_returned_to_the_system():
    assert released("1") == ("True", pytest.approx(400, abs=20))  # 100 blocks of 4 MiB given back
    tuned, mib = released("0")
    assert tuned == "False" and mib < 50  # the untuned heap keeps them


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_threshold_in_bytes_replaces_the_default():
    tuned, mib = released(str(8 << 20))  # 8 MiB: the 4 MiB blocks come from the heap again
    assert tuned == "True" and mib < 50
    assert allocator.THRESHOLD == 2 << 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_run_asks_for_its_threshold_and_the_environment_wins():
    tuned, mib = released("1", 8 << 20)  # asked for 8 MiB: the 4 MiB blocks stay in the heap
    assert tuned == "True" and mib < 50
    assert released("1", 128 << 10) == ("True", pytest.approx(400, abs=20))
    assert released(str(2 << 20), 8 << 20) == ("True", pytest.approx(400, abs=20))  # IFT_MALLOC_TUNING wins


def test_checkpointed_runs_with_most_weights_frozen_or_checkpointing_asked_for_get_the_small_threshold():
    assert allocator.threshold_for(True, 0.01) == allocator.CHECKPOINTED_THRESHOLD == 128 << 10
    assert allocator.threshold_for(False, 0.01) == allocator.THRESHOLD
    assert allocator.threshold_for(True, 1.0) == allocator.threshold_for(True, 0.5) == allocator.THRESHOLD
    assert allocator.threshold_for(True, 1.0, asked=True) == allocator.CHECKPOINTED_THRESHOLD
    assert allocator.threshold_for(False, 1.0, asked=True) == allocator.THRESHOLD  # asked, but not available


def test_the_tuning_can_be_switched_off(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(allocator, "_tuned", None)
    monkeypatch.setenv("IFT_MALLOC_TUNING", "0")
    assert allocator.tune_for_training() is False
