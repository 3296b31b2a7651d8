"""``report.html``: one self-contained page per run directory (styles inline, plots as base64 PNGs, no
network resource), built from the files the run left behind."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from ift.builtin_plugins.quality.html import _CSS
from ift.builtin_plugins.reporting import plots
from ift.builtin_plugins.reporting.rundata import RunData, better, duration, fmt, headline, read_run, when
from ift.files import atomic_write

_EXTRA_CSS = """
.badge{display:inline-block;padding:1px 10px;border-radius:12px;font-weight:600;font-size:13px;color:#fff}
.completed{background:#1a7f37}.failed{background:#cf222e}.interrupted{background:#9a6700}.running,.unknown{background:#0969da}
.error{border:1px solid #cf222e;background:#ffebe9;padding:8px 12px;border-radius:6px;white-space:pre-wrap;
font-family:ui-monospace,monospace;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:20px;font-variant-numeric:tabular-nums}.card span{color:#59636e;font-size:12px}
td.good{background:#dafbe1}td.bad{background:#ffebe9}
td.text{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;max-width:300px;overflow-wrap:anywhere}
details{margin:24px 0}summary{cursor:pointer;font-weight:600;font-size:16px}
pre{background:#f6f8fa;padding:8px;overflow:auto;font-size:12px;max-height:480px}.muted{color:#59636e}
"""


def write_run_report(run_dir: Path) -> Path:
    """Write ``report.html`` into ``run_dir`` (atomically) from its status, metrics, manifest and events;
    works for completed, failed, interrupted and running runs. Returns the file's path."""
    run = read_run(Path(run_dir))
    path = run.path / "report.html"
    atomic_write(path, render_run_report(run))
    return path


def render_run_report(run: RunData) -> str:
    parts = [_header(run), _cards(run), _training(run), _evaluation(run), _samples(run), _data(run), _manifest(run)]
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>ift run report: {escape(run.name)}</title><style>{_CSS}{_EXTRA_CSS}</style></head>"
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )


def _header(run: RunData) -> str:
    status = str(run.status.get("status", "unknown"))
    started, finished = run.status.get("started"), run.manifest.get("finished") or run.status.get("updated")
    took = finished - started if isinstance(started, int | float) and isinstance(finished, int | float) else None
    model = (run.manifest.get("model") or {}).get("summary") or (run.manifest.get("model") or {}).get("origin", "")
    out = (
        f"<h1>Run report: {escape(run.name)} <span class='badge {escape(status)}'>{escape(status)}</span></h1>"
        f"<p class=sub>{escape(str(run.path))} · started {when(started)} · took {duration(took)}"
        f"{' · ' + escape(str(model)) if model else ''}</p>"
    )
    if run.status.get("error"):
        out += f"<div class=error><b>{escape(status)}:</b> {escape(str(run.status['error']))}</div>"
    return out


def _cards(run: RunData) -> str:
    train = run.metrics.get("train") or {}
    cards = [
        (fmt(run.steps), "optimizer steps"),
        (fmt(train.get("train_loss")), "last train loss"),
        (fmt(train.get("tokens_per_s")), "tokens / s"),
        (duration(train.get("train_seconds")), "training time"),
    ]
    top = headline(run.metrics)
    if top:
        name, before, after = top
        cards.insert(
            0, (f"{fmt(before)} → {fmt(after)}" if before is not None else fmt(after), f"{name} (baseline → final)")
        )
    return (
        "<div class=cards>"
        + "".join(f"<div class=card><b>{escape(v)}</b><span>{escape(k)}</span></div>" for v, k in cards)
        + "</div>"
    )


def _table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """An HTML table; the ``right`` columns (numbers) are right-aligned."""
    right = right or set()
    cls = [" class=num" if j in right else "" for j in range(len(header))]
    head = "".join(f"<th{cls[j]}>{escape(h)}</th>" for j, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{cls[j]}>{escape(c)}</td>" for j, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: str, alt: str, caption: str) -> str:
    return (
        f"<figure><img alt='{escape(alt)}' src='data:image/png;base64,{png}'>"
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _training(run: RunData) -> str:
    png = plots.training_curves(run)
    if png is None:
        return "<h2>Training</h2><p class=muted>No training steps were logged.</p>"
    return (
        "<h2>Training</h2><div class=plots>"
        + _img(
            png,
            "loss and learning rate",
            "Training loss per "
            "trainable token at each logged step (eval loss: baseline, periodic and final evaluations), and the "
            "learning rate schedule.",
        )
        + "</div>"
    )


def _change_cell(metric: str, before: Any, after: Any) -> str:
    side = better(metric, before, after)
    cls = {"b": " class=good", "a": " class=bad"}.get(side, "")
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return "<td>-</td>"
    return f"<td{cls} style='text-align:right'>{'+' if after > before else ''}{fmt(after - before)}</td>"


def _metric_rows(final: dict[str, Any], baseline: dict[str, Any], label: str = "") -> str:
    rows = ""
    for metric, after in final.items():
        if metric == "n":
            continue
        before = baseline.get(metric)
        rows += (
            f"<tr>{f'<td>{escape(label)}</td>' if label else ''}<td>{escape(metric)}</td>"
            f"<td class=num>{fmt(before)}</td><td class=num>{fmt(after)}</td>"
            f"{_change_cell(metric, before, after)}</tr>"
        )
    return rows


def _evaluation(run: RunData) -> str:
    final, baseline = run.metrics.get("final") or {}, run.metrics.get("baseline") or {}
    if not final:
        return (
            "<h2>Evaluation</h2><p class=muted>No final evaluation (the run did not finish, or had no "
            "held-out examples or metrics).</p>"
        )
    head = "<tr><th>metric</th><th class=num>baseline</th><th class=num>final</th><th class=num>change</th></tr>"
    n = (final.get("overall") or {}).get("n")
    out = (
        f"<h2>Evaluation</h2><p class=sub>{fmt(n)} held-out examples; green: better, red: worse (loss and "
        "perplexity: lower is better; others: higher).</p><h3>Overall</h3>"
        f"<table>{head}{_metric_rows(final.get('overall') or {}, baseline.get('overall') or {})}</table>"
    )
    per_source = final.get("per_source") or {}
    if per_source:
        rows = "".join(
            _metric_rows(values, (baseline.get("per_source") or {}).get(name) or {}, name)
            for name, values in per_source.items()
        )
        out += f"<h3>Per source</h3><table><tr><th>source</th>{head[4:]}{rows}</table>"
    png = plots.eval_curves(run)
    if png:
        out += (
            "<h3>Over training</h3><div class=plots>"
            + _img(
                png,
                "evaluation metrics over steps",
                ("Overall evaluation metrics at step 0 (baseline), at each periodic evaluation and at the end."),
            )
            + "</div>"
        )
    return out


def _samples(run: RunData) -> str:
    samples = run.metrics.get("samples") or []
    if not samples:
        return ""
    rows = [
        [
            str(s.get("source", "")),
            str(s.get("prompt", "")),
            str(s.get("reference", "")),
            str(s.get("baseline", "-")),
            str(s.get("final", "-")),
        ]
        for s in samples
    ]
    body = "".join("<tr>" + "".join(f"<td class=text>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        "<h2>Sample generations</h2><p class=sub>Held-out prompts, their references, and what the model "
        "generated before and after training.</p><table><tr><th>source</th><th>prompt</th><th>reference</th>"
        f"<th>before</th><th>after</th></tr>{body}</table>"
    )


def _data(run: RunData) -> str:
    data = run.manifest.get("data") or {}
    if not data:
        return "<h2>Data</h2><p class=muted>The run stopped before its data was prepared.</p>"
    blocks = []
    sources = data.get("sources") or []
    if sources:
        blocks.append(
            (
                "Sources",
                _table(
                    ["source", "kind", "records", "weight", "fingerprint"],
                    [
                        [
                            s.get("name", ""),
                            s.get("source", ""),
                            fmt(s.get("records")),
                            f"{s.get('weight', 1.0):g}",
                            str(s.get("fingerprint", "")),
                        ]
                        for s in sources
                    ],
                    right={2, 3},
                ),
            )
        )
    transforms = data.get("transforms") or []
    if transforms:
        blocks.append(
            (
                "Transforms (drops by reason)",
                _table(
                    ["transform", "in", "out", "dropped", "changed"],
                    [
                        [
                            t.get("name", ""),
                            fmt(t.get("in")),
                            fmt(t.get("out")),
                            _reasons(t.get("dropped")),
                            _reasons(t.get("changed")),
                        ]
                        for t in transforms
                    ],
                    right={1, 2},
                ),
            )
        )
    split = data.get("split") or {}
    if split:
        rows = [[k.replace("_", " "), fmt(v)] for k, v in split.items() if not isinstance(v, dict)]
        blocks.append(("Split", _table(["", "records"], rows, right={1})))
    mixture = data.get("mixture") or {}
    if mixture.get("sources"):
        title = f"Mixture: {mixture.get('strategy')}" + (
            f", T = {mixture['temperature']:g}" if mixture.get("temperature") else ""
        )
        blocks.append(
            (
                title,
                _table(
                    ["source", "records", "target share", "examples", "trainable tokens", "token share"],
                    [
                        [
                            name,
                            fmt(m.get("records")),
                            f"{m.get('target_share', 0):.3f}",
                            fmt(m.get("examples", m.get("planned_examples"))),
                            fmt(m.get("trainable_tokens")),
                            f"{m.get('trainable_token_share', 0):.3f}",
                        ]
                        for name, m in mixture["sources"].items()
                    ],
                    right={1, 2, 3, 4, 5},
                ),
            )
        )
    encoding = data.get("encoding") or {}
    if encoding:
        blocks.append(
            (
                "Tokenization and length policy",
                _table(
                    ["stage", "in", "out", "dropped / cut", "tokens", "trainable"],
                    [
                        [
                            stage,
                            fmt(e.get("in")),
                            fmt(e.get("out")),
                            _reasons(e.get("reasons")),
                            fmt(e.get("tokens")),
                            fmt(e.get("trainable_tokens")),
                        ]
                        for stage, e in encoding.items()
                    ],
                    right={1, 2, 4, 5},
                ),
            )
        )
    out = "<h2>Data</h2><div class=row>" + "".join(f"<div><h3>{t}</h3>{b}</div>" for t, b in blocks) + "</div>"
    figure = plots.length_figure(run)
    if figure:
        link = (
            "<p>The full data quality report: <a href='data_report.html'>data_report.html</a></p>"
            if (run.path / "data_report.html").is_file()
            else ""
        )
        return out + "<h3>Lengths</h3><div class=plots>" + figure + "</div>" + link
    return out + (
        "<p class=muted>No length histogram: this run directory has no data_report.json "
        "(<code>ift data report RECIPE -o RUN_DIR</code> writes one).</p>"
    )


def _reasons(counts: Any) -> str:
    if not counts:
        return "-"
    return ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in counts.items())


def _manifest(run: RunData) -> str:
    m = run.manifest
    if not m:
        return ""
    versions = [
        ["ift", str(m.get("ift", ""))],
        ["hook API", str(m.get("hook_api", ""))],
        ["python", str(m.get("python", ""))],
        *[[k, str(v)] for k, v in (m.get("packages") or {}).items()],
    ]
    facts = [
        ["seed", fmt(m.get("seed"))],
        ["git", str(m.get("git") or "-")],
        ["template", f"{(m.get('template') or {}).get('name', '-')} {(m.get('template') or {}).get('hash', '')}"],
        ["platform", str(m.get("platform", ""))],
        ["command", " ".join(map(str, m.get("command") or []))],
    ]
    model = m.get("model") or {}
    facts += [[f"model {k}", fmt(v)] for k, v in model.items() if k != "summary"]
    plugins = [
        [
            p.get("name", ""),
            f"{p.get('distribution', '')} {p.get('version', '')}",
            p.get("origin", ""),
            "; ".join(f"{kind}: {', '.join(names)}" for kind, names in (p.get("registered") or {}).items()),
        ]
        for p in m.get("plugins") or []
    ]
    return (
        "<details><summary>Manifest: versions, plugins, environment</summary><div class=row>"
        f"<div><h3>Versions</h3>{_table(['package', 'version'], versions)}</div>"
        f"<div><h3>Run</h3>{_table(['', ''], facts)}</div></div>"
        f"<h3>Plugins</h3>{_table(['plugin', 'distribution', 'origin', 'registers'], plugins)}"
        f"<h3>manifest.json</h3><pre>{escape(json.dumps(m, indent=2, default=str))}</pre></details>"
    )
