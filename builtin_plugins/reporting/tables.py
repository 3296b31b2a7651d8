"""Terminal tables for ``ift runs`` (one line per run directory) and ``ift compare`` (metric differences
between two runs)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ift.builtin_plugins.reporting.rundata import RunData, better, fmt, headline, lower_is_better, when

TRAIN_KEYS = ("steps", "train_loss", "tokens_per_s", "train_seconds")


def aligned(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Rows as text columns separated by two spaces; the first row is the header, underlined."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_row(run: RunData) -> dict[str, Any]:
    """What ``ift runs`` shows of one run (also its ``--json`` form)."""
    top = headline(run.metrics)
    row: dict[str, Any] = {
        "name": run.name,
        "path": str(run.path),
        "status": run.status.get("status", "unknown"),
        "started": run.status.get("started"),
        "steps": run.steps,
        "metric": top[0] if top else None,
        "baseline": top[1] if top else None,
        "final": top[2] if top else None,
    }
    if run.status.get("error"):
        row["error"] = run.status["error"]
    return row


def runs_table(rows: list[dict[str, Any]]) -> str:
    table = [["run", "status", "started", "steps", "metric", "baseline", "final"]]
    for row in rows:
        table.append(
            [
                row["name"],
                row["status"],
                when(row["started"]),
                fmt(row["steps"]),
                row["metric"] or "-",
                fmt(row["baseline"]),
                fmt(row["final"]),
            ]
        )
    return aligned(table, right={3, 5, 6})


def compare_rows(a: RunData, b: RunData) -> list[dict[str, Any]]:
    """Every metric both runs can be compared on: overall and per source, baseline and final, then training
    figures. ``better`` is "a", "b", "=" or "" (no direction or a value missing)."""
    rows: list[dict[str, Any]] = []
    scopes = [
        "overall",
        *sorted(
            {
                s
                for run in (a, b)
                for stage in ("final", "baseline")
                for s in ((run.metrics.get(stage) or {}).get("per_source") or {})
            }
        ),
    ]
    for scope in scopes:
        for stage in ("baseline", "final"):
            values_a, values_b = _scope(a, stage, scope), _scope(b, stage, scope)
            for metric in dict.fromkeys([*values_a, *values_b]):
                if metric == "n":
                    continue
                rows.append(_row(scope, stage, metric, values_a.get(metric), values_b.get(metric)))
    train_a, train_b = a.metrics.get("train") or {}, b.metrics.get("train") or {}
    for key in TRAIN_KEYS:
        if key in train_a or key in train_b:
            rows.append(_row("train", "", key, train_a.get(key), train_b.get(key)))
    return rows


def _scope(run: RunData, stage: str, scope: str) -> dict[str, Any]:
    result = run.metrics.get(stage) or {}
    return (result.get("overall") if scope == "overall" else (result.get("per_source") or {}).get(scope)) or {}


def _row(scope: str, stage: str, metric: str, value_a: Any, value_b: Any) -> dict[str, Any]:
    numeric = isinstance(value_a, int | float) and isinstance(value_b, int | float)
    return {
        "scope": scope,
        "stage": stage,
        "metric": metric,
        "a": value_a,
        "b": value_b,
        "difference": value_b - value_a if numeric else None,
        "better": better(metric, value_a, value_b),
    }


def option_differences(a: RunData, b: RunData) -> list[str]:
    """One line per metric both runs computed with different options (the manifest's ``metrics.NAME.options``;
    ``[eval.metric_options.NAME]``): their values are not measured the same way."""
    metrics_a, metrics_b = a.manifest.get("metrics") or {}, b.manifest.get("metrics") or {}
    notes = []
    for name in sorted(set(metrics_a) & set(metrics_b)):
        options_a, options_b = (metrics_a[name] or {}).get("options"), (metrics_b[name] or {}).get("options")
        if options_a is not None and options_b is not None and options_a != options_b:
            notes.append(f"{name} was computed with other options: A {_options(options_a)}, B {_options(options_b)}")
    return notes


def _options(options: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {v!r}" for k, v in options.items()) + "}"


def compare_table(a: RunData, b: RunData, rows: list[dict[str, Any]]) -> str:
    """The comparison as text: B - A per row, and which run is better by the metric's direction."""
    label = {"a": "A", "b": "B", "=": "same", "": ""}
    table = [["scope", "stage", "metric", "A", "B", "B - A", "better"]]
    for row in rows:
        diff = row["difference"]
        change = "-" if diff is None else ("+" if diff > 0 else "") + fmt(diff)
        if diff is not None and isinstance(row["a"], int | float) and row["a"]:
            change += f" ({100 * diff / abs(row['a']):+.1f}%)"
        direction = lower_is_better(row["metric"])
        hint = "" if direction is None else " (lower)" if direction else " (higher)"
        table.append(
            [
                row["scope"],
                row["stage"],
                row["metric"] + hint,
                fmt(row["a"]),
                fmt(row["b"]),
                change,
                label[row["better"]],
            ]
        )
    wins = {k: sum(r["better"] == k for r in rows) for k in ("a", "b", "=")}
    head = [f"A: {_describe(a)}", f"B: {_describe(b)}", *(f"note: {n}" for n in option_differences(a, b)), ""]
    tail = [
        "",
        f"better: A on {wins['a']}, B on {wins['b']}, same on {wins['=']} of "
        f"{sum(1 for r in rows if r['better'])} compared values",
        "(lower is better for loss, perplexity, error rates and times; higher for the others)",
    ]
    return "\n".join([*head, aligned(table, right={3, 4, 5}), *tail])


def _describe(run: RunData) -> str:
    steps = run.steps
    return f"{Path(run.path)}  ({run.status.get('status', 'unknown')}" + (
        f", {steps} steps)" if steps is not None else ")"
    )
