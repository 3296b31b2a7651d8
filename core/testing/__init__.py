"""``ift.testing``: a pytest plugin for plugin authors (and ift's own tests).

Opt in from a ``conftest.py`` with ``pytest_plugins = ["ift.testing"]``, or run ``pytest -p ift.testing``;
it is never loaded for projects that do not ask for it. It gives:

- fixtures: ``ift_host`` (a fresh plugin host: builtins plus the plugins of the overridable ``ift_plugins``
  fixture; whatever a test registers is unregistered after it), ``ift_tiny_model_table`` / ``ift_tiny_model``
  (a tiny Llama built from a config with the byte-level tokenizer: no download), and ``ift_run`` (runs a
  recipe in-process through ``ift run`` and returns the run directory);
- contract suites, one per plugin kind (:class:`SourceContract`, :class:`TransformContract`,
  :class:`RendererContract`, :class:`ModelAdapterContract`, :class:`TrainerContract`, :class:`ObjectiveContract`,
  :class:`MetricContract`, :class:`SimilarityBackendContract`): subclass one in a ``Test...`` class and set
  ``component``, ``config`` and sample input;
- helpers: :func:`tiny_model_table`, :func:`tiny_model_toml`, :func:`sample_records`, :func:`sample_rows`,
  :func:`write_files`, :func:`run_recipe`, :class:`RunFailed`.

Importing this module imports pytest but not torch.
"""

from __future__ import annotations

from ift.testing.contracts import (
    CONTRACTS,
    ComponentContract,
    MetricCase,
    MetricContract,
    ModelAdapterContract,
    ObjectiveContract,
    PeftMethodContract,
    RendererContract,
    SimilarityBackendContract,
    SourceContract,
    TrainerContract,
    TransformContract,
    record_problems,
)
from ift.testing.fixtures import (
    ift_entry_points,
    ift_host,
    ift_plugins,
    ift_run,
    ift_tiny_model,
    ift_tiny_model_table,
)
from ift.testing.models import TINY_MODEL_CONFIG, TinyModel, load_tiny_model, tiny_model_table, tiny_model_toml
from ift.testing.runner import RunFailed, run_recipe
from ift.testing.samples import sample_records, sample_rows, write_files
from ift.testing.toml import dumps as recipe_toml

__all__ = [
    "CONTRACTS",
    "TINY_MODEL_CONFIG",
    "ComponentContract",
    "MetricCase",
    "MetricContract",
    "ModelAdapterContract",
    "ObjectiveContract",
    "PeftMethodContract",
    "RendererContract",
    "RunFailed",
    "SimilarityBackendContract",
    "SourceContract",
    "TinyModel",
    "TrainerContract",
    "TransformContract",
    "ift_entry_points",
    "ift_host",
    "ift_plugins",
    "ift_run",
    "ift_tiny_model",
    "ift_tiny_model_table",
    "load_tiny_model",
    "recipe_toml",
    "record_problems",
    "run_recipe",
    "sample_records",
    "sample_rows",
    "tiny_model_table",
    "tiny_model_toml",
    "write_files",
]
