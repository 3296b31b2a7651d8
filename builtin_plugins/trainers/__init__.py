"""Objectives on the training loop beyond plain ``sft``: adversarial training on the input embeddings
(``sft-adversarial``), continual learning that limits forgetting (``continual``) and knowledge distillation
(``distill``).

Each is an :class:`ift.Objective` (what one micro-batch's loss is) registered with ``ift_register_objectives``,
with a short trainer of its own (an :class:`ift.ObjectiveTrainer`) that sets up and reports around
:func:`ift.train`: optimizer, schedule, accumulation, checkpoints and resume are the loop's, exactly as in
``sft``.
"""

from __future__ import annotations

import ift
from ift.builtin_plugins.trainers.adversarial import AdversarialTrainer, EmbeddingAdversarial
from ift.builtin_plugins.trainers.continual import ContinualTrainer, ElasticWeightConsolidation
from ift.builtin_plugins.trainers.distill import Distillation, DistillTrainer

__all__ = [
    "AdversarialTrainer",
    "ContinualTrainer",
    "DistillTrainer",
    "Distillation",
    "ElasticWeightConsolidation",
    "EmbeddingAdversarial",
]


@ift.hookimpl
def ift_register_objectives() -> list[type]:
    return [EmbeddingAdversarial, ElasticWeightConsolidation, Distillation]  # each with its own trainer class
