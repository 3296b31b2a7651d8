"""ift: instruction fine-tuning with TOML recipes and pluggy plugins.

This module is the public API: for notebooks and scripts, :func:`load_recipe`, :func:`run`, :func:`preview`
and :func:`load_run` (docs/python-api.md); for plugin authors, the component base classes and hooks.
Importing it never imports torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ift.api import LoadedRecipe, RunResult, load_recipe, load_run, preview, run
from ift.components import (
    Component,
    EncodedExample,
    EvalOutputs,
    InstructionSource,
    Metric,
    ModelAdapter,
    RecordFilter,
    Renderer,
    Segment,
    SimilarityBackend,
    Tally,
    Trainer,
    Transform,
)
from ift.config import ComponentConfig, TrainerConfig
from ift.engine import Callback, LoopState, OptimizerFactory, SchedulerFactory, TrainingConfig, train
from ift.errors import DataError, IftError, PluginError, Preempted, Problem, RecipeError, RunDirectoryInUse, RunError
from ift.files import atomic_write, check_data_file
from ift.hookspecs import HOOK_API_VERSION, hookimpl
from ift.host import did_you_mean
from ift.objectives import LossTerms, Objective, ObjectiveConfig
from ift.peft import PeftMethod, PeftMethodConfig, load_peft_model, wrap_peft_model
from ift.records import InstructionRecord, Message, RowError, normalize_row
from ift.runtime import is_main_process, select_device
from ift.sft import NLL, ObjectiveTrainer, SFTConfig, SFTTrainer
from ift.training import TrainContext, TrainResult

#: Public names imported on first use: ``PreviewResult`` / ``PreviewExample`` (what :func:`preview` returns)
#: live with the preview code, which imports the data pipeline.
_LAZY = {"PreviewResult": "ift.previewing", "PreviewExample": "ift.previewing"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'ift' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


#: The modules besides ``ift`` itself whose ``__all__`` is public API: plugins (the builtin ones included, which a
#: test holds to this) import only these names. ``ift.templating`` and ``ift.head_loss`` serve renderers and model
#: adapters; ``ift.engine`` / ``ift.callbacks`` the training loop; ``ift.data``, ``ift.recipe`` and
#: ``ift.evaluation`` the pipeline's steps, for commands; ``ift.testing`` plugin tests.
PUBLIC_MODULES = (
    "ift.batching",
    "ift.callbacks",
    "ift.data",
    "ift.engine",
    "ift.errors",
    "ift.evaluation",
    "ift.examples",
    "ift.files",
    "ift.head_loss",
    "ift.objectives",
    "ift.recipe",
    "ift.records",
    "ift.runtime",
    "ift.templating",
    "ift.testing",
)

try:
    __version__ = version("ift")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
    "PUBLIC_MODULES",
    "RowError",
    "atomic_write",
    "check_data_file",
    "did_you_mean",
    "is_main_process",
    "load_peft_model",
    "wrap_peft_model",
    "normalize_row",
    "select_device",
    "NLL",
    "Callback",
    "LoopState",
    "OptimizerFactory",
    "SchedulerFactory",
    "TrainingConfig",
    "train",
    "HOOK_API_VERSION",
    "Component",
    "ComponentConfig",
    "DataError",
    "EncodedExample",
    "EvalOutputs",
    "IftError",
    "InstructionRecord",
    "InstructionSource",
    "Message",
    "LoadedRecipe",
    "LossTerms",
    "Metric",
    "ModelAdapter",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveTrainer",
    "PeftMethod",
    "PeftMethodConfig",
    "PluginError",
    "PreviewExample",
    "PreviewResult",
    "Preempted",
    "Problem",
    "RecipeError",
    "RecordFilter",
    "Renderer",
    "RunDirectoryInUse",
    "RunError",
    "RunResult",
    "SFTConfig",
    "SFTTrainer",
    "Segment",
    "SimilarityBackend",
    "Tally",
    "TrainContext",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "Transform",
    "__version__",
    "hookimpl",
    "load_recipe",
    "load_run",
    "preview",
    "run",
]
