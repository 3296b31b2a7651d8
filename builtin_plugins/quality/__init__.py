"""The data quality report: diversity, clarity, consistency and accuracy proxies of an instruction set,
overall and per source, as JSON, a terminal table and a self-contained HTML page.

    report = quality_report(records, eval_records=held_out)
    write_report(report, run_dir)          # data_report.json, data_report.html
    print(format_report_table(report))

Pure functions of the records: no model, no torch, no download. matplotlib is imported only to draw the
HTML page's plots.
"""

from __future__ import annotations

from ift.builtin_plugins.quality.compute import DEFINITIONS, REPORT_VERSION, quality_report
from ift.builtin_plugins.quality.html import render_html, write_report
from ift.builtin_plugins.quality.table import format_report_table

__all__ = ["DEFINITIONS", "REPORT_VERSION", "format_report_table", "quality_report", "render_html", "write_report"]
