"""The C allocator's settings for training on a CPU.

glibc serves an allocation from its heap below a threshold and with ``mmap`` above it, and raises that threshold
(up to 32 MiB) every time a large block is freed. A training step allocates and frees many activation tensors of a
few MiB each: once the threshold has risen they come from the heap, whose freed space is kept by the process, so
the resident size grows to the high-water mark of a fragmented heap and stays there. Fixing the threshold gives
every tensor above it its own mapping, returned to the system when the tensor is freed; but each new mapping is
faulted in and zeroed page by page by the kernel, a cost paid on every allocation above the threshold.

The threshold is 2 MiB. Measured on SmolLM2-135M, full fine-tuning, 8 x 512-token batches, ift's defaults, 2
cores (``examples/benchmarks/real_memory.py``, 2026-12-06, one run each): 128 KiB (glibc's starting value, this
module's setting before) 3.03 GiB peak RSS at 86 real tokens/s; 2 MiB 3.13 GiB at 95; 4 MiB 3.49 GiB at 97;
8 MiB 3.83 GiB at 110; untuned 4.80 GiB at 105.

With activation checkpointing on and most weights frozen (LoRA and the other PEFT methods), or with
checkpointing asked for in the recipe (``gradient_checkpointing = true``, a request for memory before speed), it is
128 KiB. PEFT: there the smaller threshold cost no measurable speed and saved a sixth of the peak. SmolLM2-135M,
LoRA r=16 on all linear layers, 8 x 512, checkpointing on, A B A B on 2026-12-07: 2 MiB 1.77 / 1.70 GiB at 73 /
63 real tokens/s, 128 KiB 1.48 / 1.48 GiB at 69 / 67. Without checkpointing the same LoRA run needs the larger
one (2 MiB 3.28 / 3.32 GiB at 136 / 133 tokens/s, 128 KiB 2.23 / 2.23 GiB at 87 / 90). Full fine-tuning with
checkpointing on (``real_memory.py --only defaults``, rounds of 2 MiB, 512 KiB, 128 KiB, 2026-12-07, with the head's
gradient added into ``weight.grad`` in place): 2 MiB 2.98 / 3.00 GiB at 105 / 102 real tokens/s (``sys`` 46 / 48 s),
512 KiB 2.71 / 2.71 GiB at 93 / 89 (75 s), 128 KiB 2.70 / 2.70 GiB at 90 / 90 (74 s): a tenth less memory for an
eighth of the speed. So ``auto`` checkpointing (on by itself on a CPU) keeps 2 MiB, and ``true`` takes 128 KiB.

``IFT_MALLOC_TUNING=0`` leaves the allocator as it is; ``IFT_MALLOC_TUNING=<bytes>`` (a number above 1) fixes
that threshold instead, whatever the run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["threshold_for", "tune_for_training"]

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
THRESHOLD = 2 * 1024 * 1024
CHECKPOINTED_THRESHOLD = 128 * 1024
_tuned: int | None = None  # the threshold set in this process


def threshold_for(checkpointed: bool, trainable_fraction: float, *, asked: bool = False) -> int:
    """The threshold for a run: :data:`CHECKPOINTED_THRESHOLD` with checkpointing on and either under half of the
    weights trained or checkpointing ``asked`` for in the recipe (``true``, not ``auto``); :data:`THRESHOLD`
    otherwise (see the module docstring for the measurements)."""
    small = checkpointed and (asked or trainable_fraction < 0.5)
    return CHECKPOINTED_THRESHOLD if small else THRESHOLD


def tune_for_training(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for the rest of the process (again only when another
    is asked for); ``IFT_MALLOC_TUNING`` overrides it. Returns whether it is set: False off Linux, on another C
    library, or with ``IFT_MALLOC_TUNING=0``."""
    global _tuned
    setting = os.environ.get("IFT_MALLOC_TUNING", "1").strip()
    if setting == "0" or not sys.platform.startswith("linux"):
        return False
    if setting.isdigit() and int(setting) > 1:
        threshold = int(setting)
    threshold = min(threshold, 2**31 - 1)
    if _tuned == threshold:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        return False
    _tuned = threshold
    return True
