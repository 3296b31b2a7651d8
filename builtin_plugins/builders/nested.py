"""Nested sources: a builder reads its rows, library or seed tasks from another source named in a table
such as ``rows = { source = "csv", path = "rows.csv" }`` (a bare path string picks the source from the
file's suffix).

Instruction records come from any registered source through :meth:`ift.InstructionSource.open_nested`.
Structured rows (arbitrary columns, for templates) come from the builtin file sources' files read as plain
tables, from a plugin source that offers ``rows()``, or else from any source's records flattened to
``id, prompt, answer, system, task, label, choices, metadata``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import ift

FILE_SOURCES = ("csv", "jsonl", "json", "parquet")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Row:
    """One structured row: its position, its values, and where it is (for error messages)."""

    index: int
    values: dict[str, Any]
    file: str | None
    line: int | None


def nested_table(value: Any, context: Any = None) -> dict[str, Any]:
    """Normalise a nested source key: a path string becomes ``{source = <by suffix>, path = ...}``; a table
    without ``source`` but with a ``path`` gets the source from the suffix. Raises ValueError otherwise
    (used inside pydantic validators, so ``ift validate`` reports it with the key path).

    The nested table's own keys are checked now for the builtin file sources, and for every registered
    source when the validation ``context`` carries the plugin host (``{"host": host}``); otherwise a
    plugin source's keys are checked when the builder runs."""
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise ValueError('must be a source table such as { source = "csv", path = "rows.csv" } or a file path')
    table = dict(value)
    if "source" not in table:
        suffix = Path(str(table.get("path", ""))).suffix.lower()
        if suffix not in SUFFIXES:
            raise ValueError(
                'needs source = "..." (cannot tell the source from '
                f"{table.get('path', 'a missing path')!r}; known suffixes: {', '.join(SUFFIXES)})"
            )
        table["source"] = SUFFIXES[suffix]
    name = table["source"]
    if not isinstance(name, str):
        raise ValueError("source must be a source name")
    host = context.get("host") if isinstance(context, dict) else None
    known = {n: r.cls for n, r in host.registry["source"].items()} if host is not None else _builtin_sources()
    if name not in known:
        if host is not None:
            raise ValueError(
                f"unknown source {name!r}{ift.did_you_mean(name, known)}; available: {', '.join(sorted(known))}"
            )
        return table
    try:
        known[name].Config.model_validate({k: v for k, v in table.items() if k != "source"}, context=context)
    except ValidationError as exc:
        fields = list(known[name].Config.model_fields)
        raise ValueError("; ".join(_explain(e, fields) for e in exc.errors())) from None
    return table


def _explain(error: Any, fields: list[str]) -> str:
    key = ".".join(map(str, error["loc"]))
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}{ift.did_you_mean(key, fields)}"
    if error["type"] == "missing":
        return f"required key {key!r} is missing"
    return f"{key}: {error['msg']}"


def _builtin_sources() -> dict[str, type[ift.InstructionSource]]:
    from ift.builtin_plugins import sources

    return {
        "csv": sources.CsvSource,
        "jsonl": sources.JsonlSource,
        "json": sources.JsonSource,
        "parquet": sources.ParquetSource,
    }


def key_of(source: ift.InstructionSource, key: str) -> str:
    """A recipe key path for errors: ``data[<table name>].<key>`` (a source does not know its index)."""
    return f"data[{source.source_name}].{key}"


def open_source(owner: ift.InstructionSource, table: dict[str, Any], key: str) -> ift.InstructionSource:
    """The source ``table`` names, with ``owner``'s source name and folder. Uses the plugin host when the
    owner has one (any registered source); without a host only the builtin file sources are known."""
    key = key_of(owner, key)
    if getattr(owner, "host", None) is not None and hasattr(owner, "open_nested"):
        return owner.open_nested(table, key)
    name = table.get("source")
    builtin = _builtin_sources()
    if name not in builtin:
        hint = ift.did_you_mean(str(name), builtin)
        raise ift.RecipeError(
            [
                ift.Problem(
                    f"{key}.source",
                    f"unknown source {name!r}{hint} (without a plugin host only {', '.join(builtin)} can be nested)",
                )
            ]
        )
    cls = builtin[str(name)]
    try:
        config = cls.Config.model_validate({k: v for k, v in table.items() if k != "source"})
    except ValidationError as exc:
        raise ift.RecipeError(
            [ift.Problem(f"{key}.{'.'.join(map(str, e['loc']))}", e["msg"]) for e in exc.errors()]
        ) from None
    return cls(config, source_name=owner.source_name, base_dir=owner.base_dir)


def read_rows(source: ift.InstructionSource) -> Iterator[Row]:
    """Structured rows of a nested source (see the module docstring for which way is taken)."""
    from ift.builtin_plugins.sources import FileSource

    if isinstance(source, FileSource) and source.name in FILE_SOURCES:
        path = source.path
        ift.check_data_file(path, "rows file")
        limit = source.config.limit  # type: ignore[attr-defined]
        rows = _file_rows(path, source.name, getattr(source.config, "field", None))
        for row in rows:
            if limit is not None and row.index >= limit:
                return
            yield row
        return
    if callable(getattr(source, "rows", None)):
        for i, values in enumerate(source.rows()):  # type: ignore[attr-defined]
            yield Row(i, dict(values), None, None)
        return
    for i, record in enumerate(source.records()):
        yield Row(i, flatten_record(record), None, None)


def flatten_record(record: ift.InstructionRecord) -> dict[str, Any]:
    """A record as template variables: the last user turn is ``prompt``, the answer ``answer``."""
    users = [m.content for m in record.messages if m.role == "user"]
    system = next((m.content for m in record.messages if m.role == "system"), None)
    return {
        "id": record.id,
        "prompt": users[-1] if users else "",
        "answer": record.answer,
        "system": system,
        "task": record.task,
        "label": record.label,
        "choices": record.choices,
        "metadata": record.metadata,
    }


def _file_rows(path: Path, kind: str, field: str | None) -> Iterator[Row]:
    name = str(path)
    if kind == "csv":
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            start = 2
            for i, values in enumerate(reader):
                yield Row(i, {k: v for k, v in values.items() if k is not None}, name, start)
                start = reader.line_num + 1
    elif kind == "jsonl":
        with path.open(encoding="utf-8") as handle:
            index = 0
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield Row(index, _object(json_value(line, name, number), name, number), name, number)
                    index += 1
    elif kind == "json":
        data = json_value(path.read_text(encoding="utf-8"), name, None)
        if field is not None:
            data = data.get(field) if isinstance(data, dict) else None
        if not isinstance(data, list):
            raise ift.DataError(f"expected a JSON array of objects{f' under {field!r}' if field else ''}", file=name)
        for i, values in enumerate(data):
            yield Row(i, _object(values, name, None), name, None)
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise ift.DataError(f"cannot read as parquet: {exc}", file=name) from exc
        for i, values in enumerate(table.to_pylist()):
            yield Row(i, values, name, None)


def json_value(text: str, file: str, line: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ift.DataError(
            f"invalid JSON: {exc.msg} (column {exc.colno})", file=file, line=line if line is not None else exc.lineno
        ) from None


def _object(value: Any, file: str, line: int | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ift.DataError(f"expected a JSON object, got {type(value).__name__}", file=file, line=line)
    return value
