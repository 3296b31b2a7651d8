"""The report as rows of text: a terminal table, and the same rows for the HTML summary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Getter = Callable[[dict[str, Any]], str]


def _share(entry: dict[str, Any]) -> str:
    return f"{entry['count']} ({entry['share']:.1%})"


def _pct(value: float) -> str:
    return f"{value:.1%}"


# (label, value of a group, (section, key) of a count that is a problem when non-zero)
ROWS: list[tuple[str, Getter, tuple[str, str] | None]] = [
    ("records", lambda g: str(g["records"]), None),
    (
        "distinct-1 / distinct-2",
        lambda g: f"{g['diversity']['distinct_1']:.3f} / {g['diversity']['distinct_2']:.3f}",
        None,
    ),
    ("leading verb found", lambda g: _share(g["diversity"]["leading_verbs"]), None),
    (
        "unique verbs / verb+object",
        lambda g: f"{g['diversity']['leading_verbs']['unique']} / {g['diversity']['verb_objects']['unique']}",
        None,
    ),
    ("top verbs", lambda g: ", ".join(t["verb"] for t in g["diversity"]["leading_verbs"]["top"][:3]) or "-", None),
    ("top task", lambda g: _top(g["diversity"]["tasks"]["counts"]), None),
    ("top domain", lambda g: _top(g["diversity"]["domains"]["counts"]), None),
    ("near-duplicates", lambda g: _share(g["diversity"]["near_duplicates"]), ("diversity", "near_duplicates")),
    (
        "instruction words p10/median/p90",
        lambda g: "{p10} / {median} / {p90}".format(**g["clarity"]["instruction_words"]),
        None,
    ),
    ("answer words p10/median/p90", lambda g: "{p10} / {median} / {p90}".format(**g["clarity"]["answer_words"]), None),
    ("very short instructions", lambda g: _share(g["clarity"]["very_short"]), ("clarity", "very_short")),
    ("fragmentary instructions", lambda g: _share(g["clarity"]["fragmentary"]), ("clarity", "fragmentary")),
    ("schema conformity", lambda g: _pct(g["consistency"]["schema_conformity"]), None),
    (
        "role-order problems",
        lambda g: _share(g["consistency"]["role_order_problems"]),
        ("consistency", "role_order_problems"),
    ),
    ("empty outputs", lambda g: _share(g["accuracy"]["empty_outputs"]), ("accuracy", "empty_outputs")),
    ("outputs copying the input", lambda g: _share(g["accuracy"]["copied_input"]), ("accuracy", "copied_input")),
    (
        "truncated-looking outputs",
        lambda g: _share(g["accuracy"]["truncated_outputs"]),
        ("accuracy", "truncated_outputs"),
    ),
    (
        "answers outside choices",
        lambda g: f"{g['accuracy']['outside_choices']['count']} of {g['accuracy']['with_choices']}",
        ("accuracy", "outside_choices"),
    ),
]


def _top(counts: dict[str, int]) -> str:
    if not counts:
        return "-"
    label, count = next(iter(counts.items()))
    return f"{label} ({count / sum(counts.values()):.0%})"


def is_problem(group: dict[str, Any], where: tuple[str, str] | None) -> bool:
    """Whether a row's count (``where``, from :data:`ROWS`) is non-zero in this group."""
    return where is not None and bool(group[where[0]][where[1]]["count"])


def columns(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(header, group) pairs: overall, then each source when there are several."""
    cols = [("overall", report["overall"])]
    if len(report["per_source"]) > 1:
        cols += list(report["per_source"].items())
    return cols


def contamination_line(report: dict[str, Any]) -> str | None:
    found = report.get("contamination")
    if not found:
        return None
    return (
        f"overlapping the eval set ({found['eval_records']} eval records, word {found['n']}-grams of the "
        f"prompt): {_share(found)} of the other records"
    )


def format_report_table(report: dict[str, Any]) -> str:
    """A terminal summary: one row per measure, one column overall and one per source."""
    cols = columns(report)
    rows = [["", *[name for name, _ in cols]]]
    rows += [[label, *[get(group) for _, group in cols]] for label, get, _ in ROWS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    line = contamination_line(report)
    if line:
        lines.append(line)
    return "\n".join(lines)
