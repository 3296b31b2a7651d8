"""The data quality report: diversity, clarity, consistency and accuracy proxies of an instruction set,
overall and per source, as JSON, a terminal table and a self-contained HTML page.

    report = quality_report(records, eval_records=held_out)
    write_report(report, run_dir)          # data_report.json, data_report.html
    print(format_report_table(report))

Pure functions of the records: no model, no torch, no download. matplotlib is imported only to draw the
HTML page's plots.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins.quality.compute import DEFINITIONS, REPORT_VERSION, quality_report
from ift.builtin_plugins.quality.html import render_html, write_report
from ift.builtin_plugins.quality.table import format_report_table

#: Most training records the run's data report describes (a seeded sample beyond that).
SAMPLE = 10_000

__all__ = ["DEFINITIONS", "REPORT_VERSION", "format_report_table", "quality_report", "render_html", "write_report"]


@ift.hookimpl
def ift_data_prepared(run_dir: str, train_records: list[Any], eval_records: list[Any]) -> None:
    """Every run gets data_report.json / .html for the records it trains on (each record once). Above
    :data:`SAMPLE` records it describes a seeded sample of that many, so its cost stays bounded whatever the
    data's size; ``sampled_from`` then says of how many."""
    unique = list({id(r): r for r in train_records}.values())
    total = len(unique)
    if total > SAMPLE:
        keep = sorted(random.Random(0).sample(range(total), SAMPLE))
        unique = [unique[i] for i in keep]
    report = quality_report(unique, eval_records=eval_records)
    if total > SAMPLE:
        report["sampled_from"] = total
    write_report(report, Path(run_dir))
