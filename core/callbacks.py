"""Callbacks of the training loop (:func:`ift.train`): what a callback sees (:class:`LoopState`), what it may do
(:class:`Callback`), and the builtin one that stops early on an eval metric and keeps the best weights
(:class:`EarlyStoppingCallback`, the ``early_stopping_*`` keys of ``[trainer]``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ift.early_stopping import EarlyStopping

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = ["Callback", "EarlyStoppingCallback", "LoopState", "Position"]


@dataclass
class Position:
    """Where training is: enough to continue exactly after a resume."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # batches (all processes) already taken from this epoch's plan
    skipped: int = 0


@dataclass
class LoopState:
    """What callbacks see: the position, the step count the run aims for, the model (``model`` wrapped for
    training, ``unwrapped`` the plain one), the optimizer, the last logged event, the ``accelerate`` accelerator,
    whether this is the main process, and the run's progress display (``progress.write(message)``)."""

    position: Position
    total_steps: int
    steps_per_epoch: int
    model: Any
    optimizer: Any
    main: bool
    accelerator: Any = None
    progress: Any = None
    last_event: dict[str, Any] = field(default_factory=dict)

    @property
    def unwrapped(self) -> Any:
        return self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model


class Callback:
    """Observes and steers the loop. Every method is optional; all run on every process.

    - :meth:`should_evaluate` asks for an evaluation after this step (``trainer.eval_every`` is the loop's own
      schedule); with ``evaluates_first`` the evaluation runs before the step's event is logged, so that
      :meth:`on_step_end` can report what it decided;
    - :meth:`on_evaluate` sees each evaluation's result (the main process's; other processes get ``{}``);
    - :meth:`on_step_end` runs after every optimizer step: a dict it returns is merged into the step's event (the
      step is then logged even between ``log_every`` steps);
    - :meth:`should_stop` returns a reason to end training after this step (the run then ends normally, the
      reason is printed and recorded as ``train.stopped``);
    - :meth:`on_checkpoint` runs after each checkpoint is committed; :meth:`state` / :meth:`load_state` keep JSON
      values in every checkpoint, under the callback's ``name`` (one of its own; not ``loop``, ``meter``,
      ``seconds`` or ``trainer``);
    - :meth:`on_train_end` may change the final model (load other weights) and add to the summary.
    """

    name: str = ""
    evaluates_first: bool = False

    def on_train_start(self, state: LoopState) -> None:  # noqa: B027 - optional
        pass

    def should_evaluate(self, state: LoopState) -> bool:
        return False

    def on_evaluate(self, state: LoopState, result: dict[str, Any]) -> None:  # noqa: B027 - optional
        pass

    def on_step_end(self, state: LoopState) -> dict[str, Any] | None:
        return None

    def should_stop(self, state: LoopState) -> str | None:
        return None

    def on_checkpoint(self, state: LoopState) -> None:  # noqa: B027 - optional
        pass

    def on_train_end(self, state: LoopState, summary: dict[str, Any]) -> None:  # noqa: B027 - optional
        pass

    def state(self) -> dict[str, Any] | None:
        return None

    def load_state(self, state: dict[str, Any] | None) -> None:  # noqa: B027 - optional
        pass


class EarlyStoppingCallback(Callback):
    """Early stopping on one eval metric and the best weights kept (:class:`~ift.early_stopping.EarlyStopping`).

    Each evaluation's value is compared with the best so far; the step's event carries the decision (under
    ``early_stopping``); patience exhausted stops the run; with ``keep_best`` the last step is evaluated too, to
    compete for the best, and the final model is the best one."""

    name = "early_stopping"
    evaluates_first = True

    def __init__(self, tracker: EarlyStopping, *, resume_from: Path | None = None) -> None:
        self.tracker, self.resume_from = tracker, resume_from
        self.decision: dict[str, Any] | None = None

    def should_evaluate(self, state: LoopState) -> bool:
        return self.tracker.keep_best and state.position.step == state.total_steps

    def on_evaluate(self, state: LoopState, result: dict[str, Any]) -> None:
        tracker, step = self.tracker, state.position.step
        # only the main process evaluates: it tells the others what it found
        found = _metric_value(result, tracker.metric) if state.main else None
        if state.accelerator is not None and state.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            found = broadcast_object_list([found], from_process=0)[0]
        if found is None:  # nothing evaluated (an empty eval split): not counted either way
            state.progress.write(
                f"early stopping: the evaluation at step {step} gave no {tracker.metric!r} (is the "
                "eval split empty?); not counted"
            )
            return
        # a value of None (NaN) counts as no improvement
        self.decision = tracker.observe(step, found[0], state.unwrapped, can_stop=step < state.total_steps)

    def on_step_end(self, state: LoopState) -> dict[str, Any] | None:
        decision, self.decision = self.decision, None
        return {"early_stopping": decision} if decision is not None else None

    def should_stop(self, state: LoopState) -> str | None:
        return self.tracker.reason() if self.tracker.stopped_at is not None else None

    def on_checkpoint(self, state: LoopState) -> None:
        if self.tracker.keep_best and state.main:
            self.tracker.prune()  # rotation may have dropped the last checkpoint referring to an older best

    def state(self) -> dict[str, Any]:
        return self.tracker.state()

    def load_state(self, state: dict[str, Any] | None) -> None:
        assert self.resume_from is not None
        self.tracker.restore(state, self.resume_from)

    def on_train_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        tracker, step = self.tracker, state.position.step
        restored = tracker.keep_best and tracker.best_step is not None and tracker.best_step != step
        if restored:
            if state.accelerator is not None:
                state.accelerator.wait_for_everyone()  # the main process wrote the best weights
            tracker.load_best(state.unwrapped)
            state.progress.write(
                f"final model: the best weights, from step {tracker.best_step} ({tracker.metric} {tracker.best_value})"
            )
        summary.pop("stopped", None)  # said by summary["early_stopping"]
        summary["early_stopping"] = tracker.summary(final_step=step, restored=restored)


def _metric_value(result: dict[str, Any], metric: str) -> tuple[float | None] | None:
    """``(value,)`` when the evaluation computed ``metric`` (the value None when it was not finite), else None."""
    overall = (result or {}).get("overall") or {}
    if metric not in overall:
        return None
    value = overall[metric]
    return (float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None,)
