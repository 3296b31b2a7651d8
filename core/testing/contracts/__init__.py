"""Contract suites, one per plugin kind: subclass one in a ``Test...`` class, set ``component`` and
``config`` (plus sample input), and pytest runs every check of that kind against your component."""

from __future__ import annotations

from ift.testing.contracts.adapter import ModelAdapterContract
from ift.testing.contracts.base import ComponentContract, record_problems
from ift.testing.contracts.metric import MetricCase, MetricContract
from ift.testing.contracts.peft import PeftMethodContract
from ift.testing.contracts.preference import PreferenceObjectiveContract, sample_pairs
from ift.testing.contracts.renderer import RendererContract
from ift.testing.contracts.similarity import SimilarityBackendContract
from ift.testing.contracts.source import SourceContract
from ift.testing.contracts.trainer import ObjectiveContract, TrainerContract
from ift.testing.contracts.transform import TransformContract

#: The contract suite of each plugin kind (keys: ``ift.components.KINDS``).
CONTRACTS: dict[str, type[ComponentContract]] = {
    "source": SourceContract,
    "transform": TransformContract,
    "renderer": RendererContract,
    "model_adapter": ModelAdapterContract,
    "trainer": TrainerContract,
    "objective": ObjectiveContract,
    "metric": MetricContract,
    "similarity_backend": SimilarityBackendContract,
    "peft_method": PeftMethodContract,
}

__all__ = [
    "CONTRACTS",
    "ComponentContract",
    "MetricCase",
    "MetricContract",
    "ModelAdapterContract",
    "ObjectiveContract",
    "PeftMethodContract",
    "PreferenceObjectiveContract",
    "RendererContract",
    "SimilarityBackendContract",
    "SourceContract",
    "TrainerContract",
    "TransformContract",
    "record_problems",
    "sample_pairs",
]
