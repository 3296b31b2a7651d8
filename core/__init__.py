"""ift: instruction fine-tuning with TOML recipes and pluggy plugins.

This module is the public API for plugin authors. Importing it never imports torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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
from ift.hookspecs import HOOK_API_VERSION, hookimpl
from ift.objectives import LossTerms, Objective, ObjectiveConfig
from ift.records import InstructionRecord, Message
from ift.sft import NLL, SFTConfig, SFTTrainer
from ift.training import TrainContext, TrainResult

try:
    __version__ = version("ift")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = [
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
    "LossTerms",
    "Metric",
    "ModelAdapter",
    "Objective",
    "ObjectiveConfig",
    "PluginError",
    "Preempted",
    "Problem",
    "RecipeError",
    "RecordFilter",
    "Renderer",
    "RunDirectoryInUse",
    "RunError",
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
]
