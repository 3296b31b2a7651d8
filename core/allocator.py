"""The C allocator's settings for training on a CPU.

glibc serves an allocation from its heap below a threshold and with ``mmap`` above it, and raises that threshold
(up to 32 MiB) every time a large block is freed. A training step allocates and frees many activation tensors of a
few MiB each: once the threshold has risen they come from the heap, whose freed space is kept by the process, so
the resident size grows to the high-water mark of a fragmented heap and stays there. Fixing the threshold at
128 KiB (glibc's own default before it adapts) gives every tensor above it its own mapping, returned to the system
when the tensor is freed. ``IFT_MALLOC_TUNING=0`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_for_training"]

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
THRESHOLD = 128 * 1024
_tuned = False


def tune_for_training() -> bool:
    """Fix glibc's mmap threshold for the rest of the process (once). Returns whether it was set: False off
    Linux, on another C library, or with ``IFT_MALLOC_TUNING=0``."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("IFT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _tuned = mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1
    return _tuned
