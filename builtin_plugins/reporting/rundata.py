"""Reading a run directory back: status, metrics, manifest and events, whatever of them exists.

A failed or interrupted run has no ``metrics.json`` and possibly no events; every reader here returns
empty values for what is missing, so reports and listings work for any run directory.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ift.errors import RunError

_LOWER_IS_BETTER = re.compile(r"loss|perplexity|ppl|error|wer|cer|seconds", re.IGNORECASE)


@dataclass
class RunData:
    """The files of one run directory, parsed; missing files are empty."""

    path: Path
    status: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    data_report: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def steps(self) -> int | None:
        steps = (self.metrics.get("train") or {}).get("steps")
        if steps is None:
            logged = [e["step"] for e in self.train_events]
            steps = logged[-1] if logged else None
        return steps

    @property
    def train_events(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "step" in e and "eval" not in e]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_run(path: Path) -> RunData:
    """Parse the run directory at ``path``; a folder without ``status.json`` is not a run directory."""
    path = Path(path)
    status = _json(path / "status.json")
    if not isinstance(status, dict):
        raise RunError(f"{path} is not a run directory (no readable status.json)")
    events: list[dict[str, Any]] = []
    if (path / "events.jsonl").is_file():
        for line in (path / "events.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # a line cut short by a crash
                continue
            if isinstance(event, dict):
                events.append(event)
    report = _json(path / "data_report.json")
    return RunData(
        path=path,
        status=status,
        metrics=_json(path / "metrics.json") or {},
        manifest=_json(path / "manifest.json") or {},
        events=events,
        data_report=report if isinstance(report, dict) and "overall" in report else None,
    )


def find_runs(folder: Path) -> list[Path]:
    """Run directories in ``folder`` (its subfolders with a ``status.json``, or ``folder`` itself), oldest
    first."""
    folder = Path(folder)
    if (folder / "status.json").is_file():
        return [folder]
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and (p / "status.json").is_file()]
    return sorted(runs, key=lambda p: ((_json(p / "status.json") or {}).get("started") or 0, p.name))


def lower_is_better(metric: str) -> bool | None:
    """The direction of a metric by its name: loss, perplexity, error rates and times go down; a count
    (``n``, ``steps``, ``tokens``) has no direction (None); everything else goes up."""
    if metric in ("n", "steps", "tokens", "trainable_tokens", "epochs"):
        return None
    return bool(_LOWER_IS_BETTER.search(metric))


def better(metric: str, a: Any, b: Any) -> str:
    """ "a", "b", "=" or "" (no direction, or a value missing)."""
    direction = lower_is_better(metric)
    if direction is None or not isinstance(a, int | float) or not isinstance(b, int | float):
        return ""
    if a == b:
        return "="
    return "b" if (b < a) == direction else "a"


def headline(metrics: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """(metric, baseline, final) for the first metric of the final evaluation, or None."""
    final = (metrics.get("final") or {}).get("overall") or {}
    baseline = (metrics.get("baseline") or {}).get("overall") or {}
    for key, value in final.items():
        if key != "n":
            return key, baseline.get(key), value
    return None


def eval_series(run: RunData) -> dict[str, list[tuple[int, float]]]:
    """Each evaluated metric over training steps: the baseline at step 0, periodic evaluations, the final
    evaluation at the last step."""
    series: dict[str, list[tuple[int, float]]] = {}

    def add(step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key != "n" and isinstance(value, int | float):
                series.setdefault(key, []).append((step, float(value)))

    add(0, (run.metrics.get("baseline") or {}).get("overall") or {})
    for event in run.events:
        match = re.fullmatch(r"step-(\d+)", str(event.get("eval", "")))
        if match:
            add(int(match.group(1)), {k: v for k, v in event.items() if k != "eval"})
    if run.steps is not None:
        add(run.steps, (run.metrics.get("final") or {}).get("overall") or {})
    return {k: sorted(v) for k, v in series.items()}


def fmt(value: Any) -> str:
    """Numbers for tables: floats with 4 decimals (thousands with 1 and separators), ints with separators."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


def when(timestamp: Any) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM``."""
    if not isinstance(timestamp, int | float):
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
