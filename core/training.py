"""What a trainer receives and returns. Trainers are plugins; this is their whole contract with the core."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ift.components import EncodedExample, ModelAdapter
    from ift.progress import Progress
    from ift.records import InstructionRecord


@dataclass
class TrainContext:
    """Everything a trainer needs. ``log_step`` writes one ``events.jsonl`` line (and feeds the progress
    display and lifecycle hooks); ``evaluate`` runs the recipe's metrics on the held-out split and
    returns them (call it on the unwrapped model, from every process: only the main one computes).
    ``checkpoint_dir`` is where to save checkpoints (see :mod:`ift.checkpoint`), ``resume_from`` a verified
    checkpoint to continue from, ``identity`` what a checkpoint must record so a resume can tell whether the
    run changed, and ``should_stop`` turns true on SIGTERM: save a checkpoint and raise
    :class:`ift.Preempted`."""

    model: Any
    tokenizer: Any
    adapter: ModelAdapter
    train_examples: Sequence[EncodedExample]  # a list, or an ift.examples.ExampleTable (flat, memory-mapped)
    eval_examples: Sequence[EncodedExample]
    seed: int
    run_dir: Path
    log_step: Callable[[dict[str, Any]], None]
    evaluate: Callable[[Any, str], dict[str, Any]]
    progress: Progress
    checkpoint_dir: Path | None = None
    resume_from: Path | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    should_stop: Callable[[], bool] = lambda: False
    encode_records: Callable[[list[InstructionRecord]], list[EncodedExample]] | None = None
    evaluate_records: Callable[[Any, list[InstructionRecord], str], dict[str, Any]] | None = None
    #: The records behind ``eval_examples`` (what ``evaluate`` measures), for trainers that add training data
    #: of their own and must keep it out of the held-out split.
    eval_records: list[InstructionRecord] = field(default_factory=list)


@dataclass
class TrainResult:
    """The trained model (unwrapped from any distributed wrapper) and facts for ``metrics.json``."""

    model: Any
    steps: int
    summary: dict[str, Any] = field(default_factory=dict)
