"""Loss terms a trainer sums over training for its summary in ``metrics.json`` (e.g. clean and adversarial loss),
kept on the device (no synchronisation per batch) and saved in checkpoints, so that the means reported after a
resume still cover every step."""

from __future__ import annotations

from typing import Any


class RunningTotals:
    """Mixin for :class:`ift.Objective` subclasses: call :meth:`start_totals` in ``setup``, :meth:`add_totals` in
    ``loss`` (a no-op when ``loss`` is called outside training, e.g. by tests), and read :meth:`totals` at the
    end. The totals are the objective's checkpointed state."""

    _totals: Any

    def start_totals(self) -> None:
        self._totals = None

    def add_totals(self, *values: Any) -> None:
        """Add one micro-batch's values (0-d tensors on one device)."""
        if not hasattr(self, "_totals"):
            return
        import torch

        added = torch.stack([v.detach().double() for v in values])
        self._totals = added if self._totals is None else self._totals.to(added.device) + added

    def totals(self, n: int) -> list[float]:
        """The ``n`` sums, zeros when nothing was trained."""
        return self._totals.tolist() if getattr(self, "_totals", None) is not None else [0.0] * n

    def state(self) -> dict[str, Any] | None:
        totals = getattr(self, "_totals", None)
        return {"totals": totals.tolist()} if totals is not None else None

    def load_state(self, state: dict[str, Any] | None) -> None:
        import torch

        if state and state.get("totals") is not None and hasattr(self, "_totals"):
            self._totals = torch.tensor(state["totals"], dtype=torch.float64)  # to the device when next added to
