"""Text summaries of a run's metrics."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def before_after_table(metrics: dict[str, Any]) -> str:
    """A small table: one row per metric (overall, then per source when there are several)."""
    final = metrics.get("final") or {}
    baseline = metrics.get("baseline") or {}
    if not final:
        return "no evaluation (no held-out examples or no metrics)"
    rows = [("metric", "before", "after")]
    groups = [("", final.get("overall", {}), baseline.get("overall", {}))]
    per_source = final.get("per_source", {})
    if len(per_source) > 1:
        groups += [
            (f"{name}/", values, baseline.get("per_source", {}).get(name, {})) for name, values in per_source.items()
        ]
    for prefix, after, before in groups:
        for key, value in after.items():
            if key == "n":
                continue
            rows.append((prefix + key, _fmt(before.get(key)) if before else "-", _fmt(value)))
    n = final.get("overall", {}).get("n")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows]
    lines.insert(1, "-" * (sum(widths) + 4))
    return "\n".join(lines) + (f"\n({n} held-out examples)" if n else "")
