"""Log ift runs to Weights & Biases from the lifecycle hooks. Only the main process logs.

Everything is configured the way wandb is everywhere, through the environment (``WANDB_API_KEY``,
``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE=offline``, ``WANDB_DIR``); the recipe never holds a key.
Logging starts only when ``WANDB_API_KEY`` or ``WANDB_MODE`` is set (so an installed plugin never stops a
run at a login prompt); ``IFT_WANDB=0`` (or ``[run] wandb = false`` where the recipe schema has that key)
turns it off. Without ``WANDB_DIR`` wandb's files go into ``<run_dir>/wandb/``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import ift

DEFAULT_PROJECT = "ift"
RUN_ID_FILE = "wandb-run-id"  # lets `ift run --resume` continue the same wandb run

_runs: dict[str, Any] = {}
_last_step: dict[str, int] = {}


def enabled(resolved: dict[str, Any]) -> bool:
    if os.environ.get("IFT_WANDB", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return (resolved.get("run") or {}).get("wandb", True) is not False


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def scalars(values: dict[str, Any], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}{k}": float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


@ift.hookimpl
def ift_run_start(run_dir: str, resolved: dict[str, Any]) -> None:
    if not is_main_process() or not enabled(resolved):
        return
    if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")):
        warnings.warn(
            "ift-wandb: not logging to Weights & Biases: set WANDB_API_KEY (or WANDB_MODE=offline, or "
            "WANDB_MODE=online after `wandb login`), or IFT_WANDB=0 to silence this",
            stacklevel=2,
        )
        return
    try:
        import wandb
    except ImportError:
        warnings.warn(
            "ift-wandb is installed but wandb is not: pip install 'ift-wandb[wandb]' (or set IFT_WANDB=0)", stacklevel=2
        )
        return
    _finish(run_dir, "completed")
    id_file = Path(run_dir) / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        name=(resolved.get("run") or {}).get("name"),
        config=resolved,  # the resolved recipe; ift never writes secrets into it
        dir=None if os.environ.get("WANDB_DIR") else run_dir,
        id=run_id,
        resume="allow" if run_id else None,
        job_type="fine-tune",
    )
    id_file.write_text(run.id + "\n")
    _runs[run_dir] = run
    _last_step[run_dir] = 0


@ift.hookimpl
def ift_step_end(run_dir: str, event: dict[str, Any]) -> None:
    run = _runs.get(run_dir)
    if run is None or "step" not in event:
        return
    step = int(event["step"])
    _last_step[run_dir] = step
    values = scalars({k: v for k, v in event.items() if k != "step"}, "train/")
    run.log(values, step=step)


@ift.hookimpl
def ift_evaluate_end(run_dir: str, stage: str, metrics: dict[str, Any]) -> None:
    run = _runs.get(run_dir)
    if run is None:
        return
    if stage == "baseline":
        step = 0
    elif stage.startswith("step-") and stage[5:].isdigit():
        step = int(stage[5:])
    else:
        step = _last_step.get(run_dir, 0)
    overall = scalars(metrics.get("overall", {}), "eval/")
    values = dict(overall)
    for source, per in (metrics.get("per_source") or {}).items():
        values.update(scalars(per, f"eval/{source}/"))
    run.log(values, step=step)
    if stage in ("baseline", "final"):  # the headline numbers, also in the run table
        for key, value in overall.items():
            run.summary[f"{stage}/{key.removeprefix('eval/')}"] = value


@ift.hookimpl
def ift_run_end(run_dir: str, status: str, metrics: dict[str, Any]) -> None:
    _finish(run_dir, status)


def _finish(run_dir: str, status: str) -> None:
    run = _runs.pop(run_dir, None)
    _last_step.pop(run_dir, None)
    if run is not None:
        run.finish(exit_code=0 if status == "completed" else 1)
