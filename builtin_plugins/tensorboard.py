"""TensorBoard logging, on by default: scalars of every logged step and every evaluation are written into
``<run_dir>/tensorboard/`` with the ``tensorboard`` package's writer. Only the main process writes.

Turn it off with ``IFT_TENSORBOARD=0`` in the environment, or ``tensorboard = false`` in the recipe's
``[run]`` table where the recipe schema has that key.

Tags: ``train/<key>`` for the numbers of each ``events.jsonl`` line (loss, learning_rate, tokens_per_s,
padding_fraction, ...) at its step; ``eval/<metric>`` overall and ``eval/<source>/<metric>`` per source, at
step 0 for the baseline, at ``n`` for ``step-<n>`` and at the last training step for the final evaluation.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import ift
from ift.runtime import is_main_process

#: Open writers by run directory (a process may run several recipes, e.g. in tests). A run's writer is
#: opened at its first scalar: a resumed run then purges the steps it is about to repeat (see _writer).
_writers: dict[str, Any] = {}
_pending: dict[str, Any] = {}
_last_step: dict[str, int] = {}


def enabled(resolved: dict[str, Any]) -> bool:
    """False when ``IFT_TENSORBOARD`` is 0/false/no/off or the resolved recipe says ``[run] tensorboard =
    false``; true otherwise."""
    if os.environ.get("IFT_TENSORBOARD", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return (resolved.get("run") or {}).get("tensorboard", True) is not False


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The plain numbers of a dict (not booleans, not None, not strings)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def eval_step(run_dir: str, stage: str) -> int:
    """The global step an evaluation is drawn at: 0 before training, n for ``step-<n>``, else the last step."""
    if stage == "baseline":
        return 0
    if stage.startswith("step-") and stage[5:].isdigit():
        return int(stage[5:])
    return _last_step.get(run_dir, 0)


@ift.hookimpl
def ift_run_start(run_dir: str, resolved: dict[str, Any]) -> None:
    if not is_main_process() or not enabled(resolved):
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # a dependency of ift, but an environment may lack it: a warning, not a failure
        warnings.warn(f"TensorBoard logging is off: {exc} (pip install tensorboard)", stacklevel=2)
        return
    _close(run_dir)
    _pending[run_dir] = SummaryWriter
    _last_step[run_dir] = 0


def _writer(run_dir: str, step: int) -> Any:
    """The run's writer, opened on first use. When the folder already holds events (a resumed run), events at
    ``step`` and later are purged, so the steps repeated after the checkpoint appear once, not twice."""
    writer = _writers.get(run_dir)
    if writer is None and run_dir in _pending:
        log_dir = Path(run_dir) / "tensorboard"
        resumed = log_dir.is_dir() and any(log_dir.glob("events.out.tfevents.*"))
        writer = _pending.pop(run_dir)(log_dir=str(log_dir), purge_step=step if resumed else None)
        _writers[run_dir] = writer
    return writer


@ift.hookimpl
def ift_step_end(run_dir: str, event: dict[str, Any]) -> None:
    if "step" not in event:
        return
    step = int(event["step"])
    writer = _writer(run_dir, step)
    if writer is None:
        return
    _last_step[run_dir] = step
    for key, value in scalars(event).items():
        if key != "step":
            writer.add_scalar(f"train/{key}", value, step)


@ift.hookimpl
def ift_evaluate_end(run_dir: str, stage: str, metrics: dict[str, Any]) -> None:
    step = eval_step(run_dir, stage)
    writer = _writer(run_dir, step)
    if writer is None:
        return
    for key, value in scalars(metrics.get("overall", {})).items():
        writer.add_scalar(f"eval/{key}", value, step)
    for source, values in (metrics.get("per_source") or {}).items():
        for key, value in scalars(values).items():
            writer.add_scalar(f"eval/{source}/{key}", value, step)
    writer.flush()


@ift.hookimpl
def ift_run_end(run_dir: str, status: str, metrics: dict[str, Any]) -> None:
    _close(run_dir)


def _close(run_dir: str) -> None:
    writer = _writers.pop(run_dir, None)
    _pending.pop(run_dir, None)
    _last_step.pop(run_dir, None)
    if writer is not None:
        writer.close()
