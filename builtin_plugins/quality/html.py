"""``data_report.json`` and a self-contained ``data_report.html``: tables, and plots drawn with matplotlib
(Agg backend) embedded as base64 PNGs, so the page needs no network and no other file."""

from __future__ import annotations

import base64
import io
import json
import re
from html import escape
from pathlib import Path
from typing import Any

from ift.builtin_plugins.quality.table import ROWS, columns, contamination_line, is_problem

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:24px 32px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}.sub{color:#59636e;margin:0 0 16px}
table{border-collapse:collapse;margin:8px 0 16px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right}th{background:#f6f8fa}.row{display:flex;flex-wrap:wrap;gap:8px 32px}
td.warn{background:#fff4d6}.plots{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;flex:1 1 480px}figure img{max-width:100%}figcaption{color:#59636e;font-size:13px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;font-size:13px}dt{font-weight:600}dd{margin:0}
"""
_PALETTE = [
    "#4c78a8",
    "#f58518",
    "#54a24b",
    "#e45756",
    "#72b7b2",
    "#b279a2",
    "#ff9da6",
    "#9d755d",
    "#bab0ac",
    "#eeca3b",
]


def write_report(report: dict[str, Any], output_dir: Path) -> None:
    """Write ``data_report.json`` and ``data_report.html`` into ``output_dir`` (created if missing)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    from ift.files import atomic_write

    atomic_write(output_dir / "data_report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write(output_dir / "data_report.html", render_html(report))


def render_html(report: dict[str, Any]) -> str:
    overall = report["overall"]
    sources = ", ".join(f"{escape(k)} ({v})" for k, v in report["sources"].items())
    parts = [
        f"<h1>Data quality report</h1><p class=sub>{report['records']} records from "
        f"{len(report['sources'])} source(s): {sources}</p>",
        "<h2>Summary</h2>",
        _summary_table(report),
    ]
    line = contamination_line(report)
    if line:
        parts.append(f"<p><b>Contamination:</b> {escape(line)}</p>")
    if overall["records"]:
        parts += ["<h2>Plots</h2><div class=plots>", _plots(report), "</div>"]
    for name, group in report["per_source"].items():
        parts.append(_source_details(name, group))
    parts.append(
        "<h2>Definitions</h2><dl>"
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in report["definitions"].items())
        + "</dl>"
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Data quality report</title>"
        f"<style>{_CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n"
    )


_NUMERIC = re.compile(r"^[-\d.,%/() ]+$|^\d+ of \d+$")


def _table(
    header: list[str], rows: list[list[str]], warn: list[list[bool]] | None = None, right: set[int] | None = None
) -> str:
    """An HTML table; cells that hold numbers (or every cell of the ``right`` columns) are right-aligned,
    ``warn`` cells highlighted."""
    right = right or set()
    numeric = [
        j in right or (all(_NUMERIC.match(row[j]) for row in rows) if rows else False) for j in range(len(header))
    ]
    head = "".join(f"<th{' class=num' if numeric[j] else ''}>{escape(h)}</th>" for j, h in enumerate(header))
    body = ""
    for i, row in enumerate(rows):
        cells = ""
        for j, cell in enumerate(row):
            classes = " ".join(
                c
                for c, on in (("num", j in right or bool(_NUMERIC.match(cell))), ("warn", bool(warn and warn[i][j])))
                if on
            )
            cells += f"<td{f' class={chr(34)}{classes}{chr(34)}' if classes else ''}>{escape(cell)}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_table(report: dict[str, Any]) -> str:
    cols = columns(report)
    rows = [[label, *[get(g) for _, g in cols]] for label, get, _ in ROWS]
    warn = [[False, *[is_problem(g, where) for _, g in cols]] for _, _, where in ROWS]
    return _table(["", *[name for name, _ in cols]], rows, warn, right=set(range(1, len(cols) + 1)))


def _source_details(name: str, group: dict[str, Any]) -> str:
    c, d = group["consistency"], group["diversity"]
    blocks = [
        (
            "Schemas (optional fields present)",
            _table(["fields", "records"], [[s["fields"], str(s["count"])] for s in c["schemas"]]),
        ),
        ("Turns per record", _table(["turns", "records"], [[k, str(v)] for k, v in c["turns"].items()])),
    ]
    if c["role_order_problems"]["by_kind"]:
        blocks.append(
            (
                "Role-order problems",
                _table(["problem", "records"], [[k, str(v)] for k, v in c["role_order_problems"]["by_kind"].items()]),
            )
        )
    if d["verb_objects"]["top"]:
        blocks.append(
            (
                "Top verb + object pairs",
                _table(
                    ["verb", "object", "records"],
                    [[p["verb"], p["object"], str(p["count"])] for p in d["verb_objects"]["top"][:10]],
                ),
            )
        )
    for key, title in (("tasks", "Tasks"), ("domains", "Domains")):
        blocks.append(
            (title, _table([key[:-1], "records"], [[k, str(v)] for k, v in list(d[key]["counts"].items())[:10]]))
        )
    inner = "".join(f"<div><h3>{escape(title)}</h3>{table}</div>" for title, table in blocks)
    return f"<h2>Source: {escape(name)}</h2><div class=row>{inner}</div>"


# --- plots ------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(title: str, caption: str, png: str) -> str:
    return (
        f"<figure><img alt='{escape(title)}' src='data:image/png;base64,{png}'>"
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _plots(report: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False}):
        out = [_length_plot(report, plt)]
        tree = report["overall"]["diversity"]["verb_objects"]["tree"]
        if tree:
            out.append(_sunburst(tree, plt))
        out.append(_labels_plot(report["overall"]["diversity"], plt))
    return "".join(out)


def _length_plot(report: dict[str, Any], plt: Any) -> str:
    groups = (
        list(report["per_source"].items())
        if 1 < len(report["per_source"]) <= len(_PALETTE)
        else [("overall", report["overall"])]
    )
    bins = report["overall"]["clarity"]["histogram"]["bins"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.8 / len(groups)
    for i, (name, group) in enumerate(groups):
        counts = group["clarity"]["histogram"]["counts"]
        total = sum(counts) or 1
        xs = [x - 0.4 + width * (i + 0.5) for x in range(len(bins))]
        ax.bar(xs, [100 * c / total for c in counts], width, label=name, color=_PALETTE[i % len(_PALETTE)])
    ax.set_xticks(range(len(bins)), bins, rotation=35, ha="right")
    ax.set_xlabel("instruction length (words)")
    ax.set_ylabel("% of records")
    if len(groups) > 1:
        ax.legend(frameon=False)
    return _figure("instruction lengths", "Instruction length distribution (first user turn).", _png(fig))


def _sunburst(tree: list[dict[str, Any]], plt: Any) -> str:
    """Inner ring: the most common leading verbs; outer ring: each verb's most common objects."""
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    inner = [t["count"] for t in tree]
    total = sum(inner)
    colors = [_PALETTE[i % len(_PALETTE)] for i in range(len(tree))]
    ax.pie(
        inner,
        radius=0.62,
        colors=colors,
        labels=[t["verb"] for t in tree],
        labeldistance=0.55,
        wedgeprops={"width": 0.42, "edgecolor": "white"},
        textprops={"fontsize": 8, "ha": "center"},
        startangle=90,
        counterclock=False,
        rotatelabels=True,
    )
    outer, outer_labels, outer_colors = [], [], []
    for t, color in zip(tree, colors, strict=True):
        shown = 0
        for obj in t["objects"]:
            outer.append(obj["count"])
            outer_labels.append(obj["object"] if obj["count"] / total >= 0.02 else "")  # wide enough to read
            outer_colors.append(color)
            shown += obj["count"]
        if t["count"] > shown:  # the verb's other objects, or none: an unlabelled pale wedge
            outer.append(t["count"] - shown)
            outer_labels.append("")
            outer_colors.append("#eeeeee")
    ax.pie(
        outer,
        radius=1.0,
        colors=outer_colors,
        labels=outer_labels,
        labeldistance=0.8,
        wedgeprops={"width": 0.38, "edgecolor": "white", "alpha": 0.75},
        textprops={"fontsize": 7, "ha": "center"},
        startangle=90,
        counterclock=False,
        rotatelabels=True,
    )
    ax.set(aspect="equal")
    return _figure(
        "leading verbs",
        "Leading verbs (inner ring) and their most common objects (outer ring), as in "
        "Self-Instruct's analysis; objects under 2% unlabelled; grey: other or no object.",
        _png(fig),
    )


def _labels_plot(diversity: dict[str, Any], plt: Any) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for ax, key, title in ((axes[0], "tasks", "task"), (axes[1], "domains", "domain")):
        counts = list(diversity[key]["counts"].items())[:12][::-1]
        ax.barh([k for k, _ in counts], [v for _, v in counts], color=_PALETTE[0] if key == "tasks" else _PALETTE[2])
        ax.set_title(f"{title} (inferred for {diversity[key]['inferred']} records)", fontsize=10)
        ax.set_xlabel("records")
    fig.tight_layout()
    return _figure(
        "tasks and domains",
        "Task and domain labels: the record's own, else the keyword rules of the tag transform.",
        _png(fig),
    )
