"""The ``sft`` trainer (:class:`ift.SFTTrainer`, defined in the core: the training loop :func:`ift.train` with the
:class:`~ift.sft.NLL` objective), registered here like every builtin component."""

from __future__ import annotations

import ift
from ift.engine import resolve_batching
from ift.sft import NLL, SFTConfig, SFTTrainer

__all__ = ["NLL", "SFTConfig", "SFTTrainer", "resolve_batching"]


@ift.hookimpl
def ift_register_trainers() -> list[type]:
    return [SFTTrainer]
