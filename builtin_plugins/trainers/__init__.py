"""Trainers built on ``sft``: adversarial training on the input embeddings (``sft-adversarial``), continual
learning that limits forgetting (``continual``) and knowledge distillation (``distill``).

Each one only overrides ``loss`` (and wraps ``train`` to set up and report) on the public ``ift.SFTTrainer``,
so optimizer, schedule, accumulation, checkpoints and resume behave exactly as in ``sft``.
"""

from __future__ import annotations

import ift
from ift.builtin_plugins.trainers.adversarial import AdversarialTrainer
from ift.builtin_plugins.trainers.continual import ContinualTrainer
from ift.builtin_plugins.trainers.distill import DistillTrainer

__all__ = ["AdversarialTrainer", "ContinualTrainer", "DistillTrainer"]


@ift.hookimpl
def ift_register_trainers() -> list[type]:
    return [AdversarialTrainer, ContinualTrainer, DistillTrainer]
