"""Where a run executes: device, precision, process rank and installed package versions.

Imports torch only inside functions."""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = [
    "bf16_supported",
    "finish_distributed",
    "is_main_process",
    "rank",
    "seed_everything",
    "select_device",
    "world_size",
]


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist`` ("not installed" when it is not)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def rank() -> int:
    """Global rank under torchrun / accelerate launch, 0 otherwise."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def select_device(preference: str = "auto") -> Any:
    """``auto``: this process's CUDA device when there is one, else Apple MPS, else CPU."""
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(preference)


def bf16_supported(device: Any) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def finish_distributed() -> None:
    """Wait for every process, then tear the process group down, so no rank exits while another still
    writes results (an undestroyed gloo/NCCL group aborts the process at exit)."""
    import sys

    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
