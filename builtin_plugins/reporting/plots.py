"""The report's plots, drawn with matplotlib's Agg backend and returned as base64 PNGs (no files, no
network). matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ift.builtin_plugins.quality.html import _PALETTE, _png
from ift.builtin_plugins.reporting.rundata import RunData, eval_series, lower_is_better


@contextmanager
def _pyplot() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context(
        {"font.size": 10, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}
    ):
        yield plt


def training_curves(run: RunData) -> str | None:
    """Training loss (with evaluation loss where measured) and learning rate over optimizer steps."""
    events = [e for e in run.train_events if isinstance(e.get("loss"), int | float)]
    if not events:
        return None
    steps = [e["step"] for e in events]
    eval_loss = eval_series(run).get("loss", [])
    with _pyplot() as plt:
        fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10.4, 3.4))
        ax_loss.plot(steps, [e["loss"] for e in events], color=_PALETTE[0], label="train loss", linewidth=1.6)
        if eval_loss:
            ax_loss.plot(
                [s for s, _ in eval_loss],
                [v for _, v in eval_loss],
                "o--",
                color=_PALETTE[1],
                label="eval loss",
                markersize=5,
                linewidth=1.2,
            )
        ax_loss.set(title="loss", xlabel="step", ylabel="loss per trainable token")
        ax_loss.legend(frameon=False)
        rates = [(e["step"], e["learning_rate"]) for e in events if isinstance(e.get("learning_rate"), int | float)]
        if rates:
            ax_lr.plot([s for s, _ in rates], [r for _, r in rates], color=_PALETTE[2], linewidth=1.6)
            ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax_lr.set(title="learning rate", xlabel="step")
        fig.tight_layout()
        return _png(fig)


def eval_curves(run: RunData) -> str | None:
    """One small panel per evaluation metric: baseline (step 0), periodic evaluations, final."""
    series = {k: v for k, v in eval_series(run).items() if len(v) >= 2}
    if not series:
        return None
    columns = min(len(series), 4)
    rows = -(-len(series) // columns)
    with _pyplot() as plt:
        fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns + 0.4, 2.5 * rows), squeeze=False)
        for ax in axes.flat[len(series) :]:
            ax.set_visible(False)
        for i, (ax, (metric, points)) in enumerate(zip(axes.flat, series.items(), strict=False)):
            ax.plot(
                [s for s, _ in points],
                [v for _, v in points],
                "o-",
                color=_PALETTE[i % len(_PALETTE)],
                markersize=4,
                linewidth=1.4,
            )
            direction = lower_is_better(metric)
            ax.set_title(
                metric + ("" if direction is None else " (lower is better)" if direction else " (higher is better)"),
                fontsize=9,
            )
            ax.set_xlabel("step", fontsize=9)
        fig.tight_layout()
        return _png(fig)


def length_figure(run: RunData) -> str | None:
    """An HTML figure of instruction lengths per source, from the data quality report when the run directory
    has one (``ift data report`` writes it)."""
    if run.data_report is None:
        return None
    from ift.builtin_plugins.quality.html import _length_plot

    with _pyplot() as plt:
        return _length_plot(run.data_report, plt)
