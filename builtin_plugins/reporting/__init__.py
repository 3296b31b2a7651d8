"""The run report and run listings: ``report.html`` in every completed run directory (and ``ift report``
for any run directory), ``ift runs`` and ``ift compare``.

    from ift.builtin_plugins.reporting import write_run_report
    write_run_report(Path("runs/x"))       # runs/x/report.html, self-contained

Everything is read back from the run directory's files, so a report can be (re)written for old, failed or
interrupted runs. matplotlib is imported only when a report is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins.reporting.commands import compare, report, runs
from ift.builtin_plugins.reporting.html import render_run_report, write_run_report
from ift.runtime import is_main_process

__all__ = ["render_run_report", "write_run_report"]


@ift.hookimpl
def ift_run_end(run_dir: str, status: str, metrics: dict[str, Any]) -> None:
    """Write ``report.html`` when a run completes (main process only). The run's results are already on
    disk, so a report that cannot be drawn is a warning, not a failed run."""
    if status != "completed" or not is_main_process() or not (Path(run_dir) / "status.json").is_file():
        return
    try:
        write_run_report(Path(run_dir))
    except Exception as exc:  # noqa: BLE001 - reported, and `ift report RUN_DIR` can retry
        print(
            f"warning: could not write {Path(run_dir) / 'report.html'}: {type(exc).__name__}: {exc} "
            f"(retry with: ift report {run_dir})",
            file=sys.stderr,
        )


@ift.hookimpl
def ift_register_commands(cli: Any) -> None:
    for command in (report, runs, compare):
        cli.add_command(command)
