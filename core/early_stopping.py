"""Early stopping on one eval metric, and keeping the weights of the best evaluation (``sft`` and its subclasses).

The trainer evaluates every ``trainer.eval_every`` steps; :class:`EarlyStopping` compares each evaluation's value
of ``trainer.early_stopping_metric`` with the best one so far (in the direction the metric class declares with
``higher_is_better``), counts evaluations without an improvement larger than ``early_stopping_min_delta``, and
says when ``early_stopping_patience`` of them in a row were seen.

Best weights are kept on disk, in ``<checkpoints>/best-step-<n>/``, not in memory: only trainable parameters (a
LoRA adapter is a few MB; full fine-tuning writes the model's weights, as a checkpoint does), written only when an
evaluation improves, which becomes rare as a run goes on. A copy in host memory would hold that much RAM for the
whole run (28 GB for a 7B model trained fully in fp32) and would be lost with the process. A folder is written like
a checkpoint (safetensors plus a sha256 manifest, renamed into place when complete); each checkpoint's position
records the best step it knew, so a resume continues with exactly that best state, and best folders that no
retained checkpoint and not the current best refer to are deleted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import ift
from ift.checkpoint import commit_folder, step_name, verify

KEY = "trainer.early_stopping_metric"
PREFIX = "best-"


def metric_direction(name: str) -> bool:
    """Whether a higher ``name`` is better, from the metric classes loaded in this process. Used only when the
    trainer's config was built without the plugin host (recipes resolve the direction while validating)."""
    import ift.builtin_plugins.metrics  # noqa: F401 - the builtin metric classes must be loaded

    found: set[bool] = set()
    pending: list[Any] = [ift.Metric]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if getattr(cls, "name", None) == name:
            found.add(bool(cls.higher_is_better))
    if len(found) != 1:
        why = "no metric class of that name is loaded" if not found else "metric classes of that name disagree"
        raise ift.RecipeError([ift.Problem(KEY, f"cannot tell whether a higher {name!r} is better: {why}")])
    return found.pop()


class EarlyStopping:
    """Best value and step of one metric, evaluations since the last improvement, and the best weights.

    ``folder`` is the run's checkpoints folder; only the ``main`` process writes or deletes files there, every
    process keeps the same counts (the trainer gives them the same values)."""

    def __init__(
        self,
        *,
        metric: str,
        higher_is_better: bool,
        patience: int,
        min_delta: float,
        keep_best: bool,
        folder: Path,
        main: bool,
    ) -> None:
        self.metric, self.higher_is_better = metric, higher_is_better
        self.patience, self.min_delta, self.keep_best = patience, min_delta, keep_best
        self.folder, self.main = folder, main
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.waited = 0  # evaluations since the last improvement
        self.evaluations = 0
        self.stopped_at: int | None = None

    # --- decisions -----------------------------------------------------------------------------

    def improves(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        if self.higher_is_better:
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def observe(self, step: int, value: float | None, model: Any, *, can_stop: bool) -> dict[str, Any]:
        """Take the evaluation at ``step`` into account (saving the weights when it is the best so far and
        ``keep_best``); returns the decision, as logged in ``events.jsonl``. ``can_stop`` is false at the last
        step, where stopping would change nothing."""
        self.evaluations += 1
        improved = self.improves(value)
        if improved:
            self.best_value, self.best_step, self.waited = value, step, 0
            if self.keep_best:
                self.save_best(model, step)
        else:
            self.waited += 1
        stop = can_stop and self.patience > 0 and self.waited >= self.patience
        if stop:
            self.stopped_at = step
        return {
            "metric": self.metric,
            "value": value,
            "improved": improved,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "evaluations_without_improvement": self.waited,
            "patience": self.patience,
            "stop": stop,
        }

    def reason(self) -> str:
        """Why training stopped, for the run's output."""
        return (
            f"early stopping at step {self.stopped_at}: {self.metric} did not improve by more than "
            f"{self.min_delta:g} in {self.waited} evaluations (best {self.best_value} at step {self.best_step})"
        )

    def summary(self, *, final_step: int, restored: bool) -> dict[str, Any]:
        """What ``metrics.json`` records under ``train.early_stopping``."""
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "keep_best": self.keep_best,
            "evaluations": self.evaluations,
            "best_step": self.best_step,
            "best_value": self.best_value,
            "stopped_early": self.stopped_at is not None,
            "stopped_at_step": self.stopped_at,
            "model_step": self.best_step if restored else final_step,
        }

    # --- position in checkpoints ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "waited": self.waited,
            "evaluations": self.evaluations,
            "stopped_at": self.stopped_at,
        }

    def restore(self, state: dict[str, Any] | None, checkpoint: Path) -> None:
        """Continue from a checkpoint's state; its best weights must still be there."""
        if not state:
            return  # a checkpoint written before this run evaluated anything
        if state.get("metric") != self.metric:
            raise ift.RunError(
                f"cannot resume from {checkpoint}: it tracked {state.get('metric')!r}, the recipe "
                f"tracks {self.metric!r} ({KEY})"
            )
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.waited, self.evaluations, self.stopped_at = state["waited"], state["evaluations"], state["stopped_at"]
        if self.keep_best and self.best_step is not None:
            problem = verify(self.best_folder(self.best_step))
            if problem is not None:
                raise ift.RunError(
                    f"cannot resume from {checkpoint}: the best weights it refers to (step "
                    f"{self.best_step}) are unusable: {problem}"
                )
        if self.main:
            self.prune()

    # --- best weights on disk ------------------------------------------------------------------

    def best_folder(self, step: int) -> Path:
        return self.folder / f"{PREFIX}{step_name(step)}"

    def save_best(self, model: Any, step: int) -> None:
        """Write the trainable weights to ``best-step-<n>`` atomically (main process only)."""
        if not self.main:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.best_folder(step)
        tmp = self.folder / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        weights = {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(
            weights,
            str(tmp / "weights.safetensors"),
            metadata={"step": str(step), "metric": self.metric, "value": repr(self.best_value)},
        )
        # A resumed run reaching the same step again writes the same weights: the older copy is replaced.
        commit_folder(tmp, final, {"format": 1, "step": step, "metric": self.metric, "value": self.best_value})
        self.prune()

    def load_best(self, model: Any) -> None:
        """Put the best weights back into ``model`` (every process; the files were written by the main one)."""
        import torch
        from safetensors.torch import load_file

        assert self.best_step is not None
        path = self.best_folder(self.best_step)
        problem = verify(path)
        if problem is not None:
            raise ift.RunError(f"cannot restore the best weights (step {self.best_step}): {problem}")
        weights = load_file(str(path / "weights.safetensors"))
        params = dict(model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        if trainable != set(weights):
            raise ift.RunError(f"the best weights in {path} do not match the model's trainable parameters")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)

    def prune(self) -> None:
        """Delete best folders that neither the current best nor a committed checkpoint refers to (and
        unfinished writes)."""
        if not self.folder.is_dir():
            return
        keep = {self.best_step} | referenced_best_steps(self.folder)
        for leftover in self.folder.glob(f".{PREFIX}step-*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for path in self.folder.glob(f"{PREFIX}step-*"):
            step = _step_of(path)
            if step is not None and step not in keep:
                shutil.rmtree(path, ignore_errors=True)


def referenced_best_steps(folder: Path) -> set[int]:
    """Best steps recorded in the committed checkpoints under ``folder``."""
    steps = set()
    for checkpoint in folder.glob("step-*"):
        try:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        best = (state.get("position", {}).get("early_stopping") or {}).get("best_step")
        if isinstance(best, int):
            steps.add(best)
    return steps


def _step_of(path: Path) -> int | None:
    digits = path.name.removeprefix(f"{PREFIX}step-")
    return int(digits) if digits.isdigit() else None
