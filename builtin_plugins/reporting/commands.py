"""``ift report``, ``ift runs`` and ``ift compare``: each parses, reads the run directories, prints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ift.builtin_plugins.reporting.rundata import find_runs, read_run
from ift.builtin_plugins.reporting.tables import compare_rows, compare_table, option_differences, run_row, runs_table


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """(Re)write RUN_DIR/report.html: curves, metrics, samples, data statistics and the manifest.

    Works for any run directory, including failed and interrupted runs (the page shows the status and
    error)."""
    from ift.builtin_plugins.reporting.html import write_run_report

    click.echo(str(write_run_report(Path(run_dir))))


@click.command()
@click.argument("folder", default="runs", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def runs(folder: str, as_json: bool) -> None:
    """List the run directories in FOLDER (default runs/): status, start, steps and headline metric
    (the first final metric, with its baseline)."""
    rows = [run_row(read_run(path)) for path in find_runs(Path(folder))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(f"no run directories in {folder}")
    else:
        click.echo(runs_table(rows))


@click.command()
@click.argument("run_a", type=click.Path(file_okay=False))
@click.argument("run_b", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def compare(run_a: str, run_b: str, as_json: bool) -> None:
    """Metric differences between RUN_A and RUN_B (B - A), overall and per source, baseline and final,
    and training figures; marks which run is better by each metric's direction."""
    a, b = read_run(Path(run_a)), read_run(Path(run_b))
    rows = compare_rows(a, b)
    if as_json:
        click.echo(
            json.dumps({"a": str(a.path), "b": str(b.path), "rows": rows, "notes": option_differences(a, b)}, indent=2)
        )
    else:
        click.echo(compare_table(a, b, rows))
