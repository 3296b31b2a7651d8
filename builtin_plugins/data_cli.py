"""``ift data``: build a recipe's instruction data into a file, and report its quality.

Both commands read the recipe's ``[[data]]`` tables and apply its ``[[transforms]]`` exactly as ``ift run``
does. A recipe used only for data may leave out ``[model]``: these commands never load a model (a
placeholder is validated in its place).
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

import ift

# Stands in for a missing [model] so that a data-only recipe validates; never loaded.
PLACEHOLDER_MODEL = {"adapter": "causal-lm", "tokenizer": "byte-level", "from_config": {"model_type": "llama"}}


def load_data_recipe(host: Any, recipe_path: str, overrides: Iterable[str] = ()) -> Any:
    """The validated recipe, with its local plugins loaded into ``host``."""
    from ift.recipe import apply_override, read_toml, validate_recipe

    path = Path(recipe_path)
    raw, text = read_toml(path)
    plugins = raw["plugins"] if isinstance(raw.get("plugins"), dict) else {}
    for local in plugins.get("local", []):
        if isinstance(local, str):
            host.load_local(path.resolve().parent / local)
    for assignment in overrides:
        apply_override(raw, assignment)
    raw.setdefault("model", dict(PLACEHOLDER_MODEL))
    return validate_recipe(raw, host, base_dir=path.resolve().parent, path=path, text=text, overrides=list(overrides))


def record_row(record: ift.InstructionRecord, *, prefix_source: bool) -> dict[str, Any]:
    """A record as a ``messages``-format row that the ``jsonl`` source reads back (the read-time ``split``
    marker is left out: it belongs to the recipe that reads the file)."""
    row = record.to_dict()
    row["metadata"] = {k: v for k, v in record.metadata.items() if k != "split"}
    if prefix_source:  # ids are unique per source only; one file needs them unique overall
        row["id"] = f"{record.source}/{record.id}"
    return row


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    count = 0
    try:
        with handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return count


def read_and_transform(recipe: Any, host: Any) -> tuple[list[ift.InstructionRecord], Any]:
    from ift.data import DataReport, apply_transforms, read_sources

    report = DataReport()
    records = read_sources(recipe, host, report)
    return apply_transforms(recipe, host, records, report), report


def describe_counts(recipe: Any, report: Any) -> list[str]:
    """Lines for the terminal: records per source (with a builder's own counts) and transform drops."""
    lines = []
    for spec, entry in zip(recipe.data, report.sources, strict=True):
        lines.append(f"source {entry['name']} ({spec.name}): {entry['records']} records  [{entry['fingerprint']}]")
        stats = entry.get("stats")
        if stats:
            lines.append("    " + ", ".join(f"{k}: {v}" for k, v in stats.items()))
    for entry in report.transforms:
        changes = {**entry["dropped"], **{f"changed: {k}": v for k, v in entry["changed"].items()}}
        detail = ", ".join(f"{reason} {n}" for reason, n in changes.items()) or "nothing dropped"
        lines.append(f"transform {entry['name']}: {entry['in']} -> {entry['out']} ({detail})")
    return lines


@click.group("data")
def data() -> None:
    """Build instruction data from a recipe's [[data]] tables, and report its quality."""


@data.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="JSONL file to write (default <run name>.jsonl).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. data.0.num_instructions=50.",
)
@click.pass_context
def build(ctx: click.Context, recipe: str, output: str | None, overrides: tuple[str, ...]) -> None:
    """Run RECIPE's sources and transforms; write the records as JSONL (messages format)."""
    from ift.data import data_notes

    host = ctx.obj["host"]
    parsed = load_data_recipe(host, recipe, overrides)
    records, report = read_and_transform(parsed, host)
    out = Path(output) if output else Path(f"{parsed.run.name}.jsonl")
    count = write_jsonl(out, (record_row(r, prefix_source=len(parsed.data) > 1) for r in records))
    for line in describe_counts(parsed, report):
        click.echo(line)
    for note in data_notes(report.to_dict()):  # eval-table records a transform dropped, as `ift run` says
        click.echo(f"note: {note}")
    click.echo(f"wrote {count} records to {out}")


@data.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False),
    help="Folder for the report files (default <run name>-data-report).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
@click.pass_context
def report(ctx: click.Context, recipe: str, output_dir: str | None, overrides: tuple[str, ...]) -> None:
    """Quality report of the data RECIPE trains on (after transforms and the eval split)."""
    from ift.data import data_notes, split_records

    host = ctx.obj["host"]
    parsed = load_data_recipe(host, recipe, overrides)
    records, counts = read_and_transform(parsed, host)
    train, held = split_records(parsed, records, counts)
    train = list({id(r): r for r in train}.values())  # a weight above 1 repeats records; report each once
    quality = importlib.import_module("ift.builtin_plugins.quality")  # imported only for this command
    result = quality.quality_report(train, eval_records=held)
    result["pipeline"] = counts.to_dict()
    out = Path(output_dir) if output_dir else Path(f"{parsed.run.name}-data-report")
    quality.write_report(result, out)
    for line in describe_counts(parsed, counts):
        click.echo(line)
    for note in data_notes(counts.to_dict()):  # and eval tables eval.max_examples cut, as `ift run` says
        click.echo(f"note: {note}")
    click.echo(quality.format_report_table(result))
    click.echo(f"report written to {out}")


@ift.hookimpl
def ift_register_commands(cli: Any) -> None:
    cli.add_command(data)
