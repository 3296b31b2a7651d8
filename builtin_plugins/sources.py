"""Builtin instruction sources: local files (JSONL, JSON, CSV, Parquet) and Hugging Face Hub datasets.

JSON Lines are parsed line by line here (exact line numbers in errors, a bad row can be skipped and counted);
the other formats are read through ``datasets``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

import ift
from ift.builtin_plugins.fieldmap import FieldMap, explode, remap
from ift.records import RowError, normalize_row


class SourceConfig(ift.ComponentConfig):
    format: str = Field(
        "auto", description="alpaca, messages, sharegpt, prompt-completion, classification, preference or auto."
    )
    system: str | None = Field(None, description="System prompt added to records that have none.")
    limit: int | None = Field(None, gt=0, description="Read at most this many rows.")
    on_bad_rows: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first bad row; skip: drop bad rows, counted by reason."
    )
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="With skip: more bad rows than this is an error.")
    fields: FieldMap | None = Field(
        None, description="Where each canonical field is in a row: dotted paths into nested objects (docs/data.md)."
    )
    explode: str | None = Field(
        None, description="A list field (dotted path): one record per element, ids '<row id>#<k>'."
    )

    @field_validator("fields", mode="before")
    @classmethod
    def _known_fields(cls, value: Any) -> Any:
        if isinstance(value, dict):
            valid = list(FieldMap.model_fields)
            for key in value:
                if key not in valid:
                    raise ValueError(
                        f"unknown mapping key {key!r}{ift.did_you_mean(str(key), valid)}; the keys are "
                        f"{', '.join(valid)}"
                    )
            for key, path in value.items():
                if not isinstance(path, str) or not path.strip("."):
                    raise ValueError(f'{key} must be a field name or a dotted path such as "meta.{key}"')
        return value


class FileSourceConfig(SourceConfig):
    path: str = Field(description="File path, relative to the recipe's folder.")


class FileSource(ift.InstructionSource):
    """Rows from a local file, one record per row. Errors name the file and the line."""

    Config: ClassVar[type[ift.ComponentConfig]] = FileSourceConfig
    builder: ClassVar[str] = "json"
    config: FileSourceConfig

    @property
    def path(self) -> Path:
        path = Path(self.config.path).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        with self.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()[:16]

    def line_of(self, row_index: int) -> int | None:
        """The file line of row ``row_index`` where the format has lines."""
        return None

    def content_fingerprint(self) -> str | None:
        return self.fingerprint() if self.path.is_file() else None

    def _load(self) -> Any:
        import datasets

        datasets.disable_progress_bars()
        return datasets.load_dataset(self.builder, data_files=str(self.path), split="train")

    def records(self) -> Iterable[ift.InstructionRecord]:
        path = self.path
        ift.check_data_file(path, "data file", f"(source {self.source_name!r})")
        self.check_file()
        try:
            table = self._load()
        except Exception as exc:  # datasets/pyarrow messages are long; keep the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ift.DataError(f"cannot read as {self.name}: {first}", file=str(path)) from exc
        self.stats = {}
        return self._normalize(table, total=len(table))

    def check_file(self) -> None:
        """Find syntax errors with a line number before ``datasets`` reports them without one."""

    #: Bad rows skipped, by reason (``on_bad_rows = "skip"``); lands in the manifest.
    stats: dict[str, Any]

    def bad_row(self, reason: str, message: str, line: int | None, total: int) -> None:
        """Raise, or count and allow the row to be skipped while under ``max_bad_fraction``."""
        if self.config.on_bad_rows == "error":
            raise ift.DataError(message, file=str(self.path), line=line)
        skipped = self.stats.setdefault("skipped_rows", {})
        skipped[reason] = skipped.get(reason, 0) + 1
        if sum(skipped.values()) > self.config.max_bad_fraction * max(total, 1):
            raise ift.DataError(
                f"{sum(skipped.values())} bad rows of {total} exceed max_bad_fraction = "
                f"{self.config.max_bad_fraction} (by reason: {skipped}); last: {message}",
                file=str(self.path),
                line=line,
            )

    def default_id(self, row_index: int) -> str:
        """The id of a row without an ``id`` field: ``<file>:<line>`` (1-based) where the format has lines,
        else ``<file>[<row index>]`` (0-based), so an id that looks like ``file:line`` is always the line."""
        line = self.line_of(row_index)
        return f"{self.path.name}:{line}" if line is not None else f"{self.path.name}[{row_index}]"

    def _normalize(self, rows: Iterable[Mapping[str, Any]], total: int = 0) -> Iterator[ift.InstructionRecord]:
        self.stats = getattr(self, "stats", {})
        for i, row in enumerate(rows):
            if self.config.limit is not None and i >= self.config.limit:
                break
            try:
                yield from mapped_records(self, row, i, self.default_id(i))
            except RowError as exc:
                line = self.line_of(i)
                where = str(exc) if line else f"row [{i}] (0-based, as in its id): {exc}"  # JSON, Parquet: no lines
                self.bad_row("row does not fit the format", where, line, total or i + 1)


def mapped_records(
    source: ift.InstructionSource, row: Mapping[str, Any], index: int, default_id: str
) -> Iterator[ift.InstructionRecord]:
    """The records of one raw row: ``explode`` and ``fields`` applied (see :mod:`.fieldmap`), then the row's
    format normalised. Raises RowError for the whole row before yielding any of its records."""
    cfg: SourceConfig = source.config  # type: ignore[assignment]
    out = []
    elements = list(explode(row, cfg.explode))
    if not elements:
        stats = source.__dict__.setdefault("stats", {})
        stats["rows_with_empty_list"] = stats.get("rows_with_empty_list", 0) + 1
    for k, element in elements:
        try:
            flat = remap(element, cfg.fields)
            messages, extras = normalize_row(flat, cfg.format, system=cfg.system)
        except RowError as exc:
            raise RowError(f"{cfg.explode}[{k}]: {exc}" if k is not None else str(exc)) from None
        row_id = flat.get("id")
        base = str(row_id) if row_id is not None and row_id != "" else default_id
        line_of = getattr(source, "line_of", None)
        line = line_of(index) if line_of is not None else None
        metadata = {
            "row": index,
            **({"line": line} if line is not None else {}),
            **({"element": k} if k is not None else {}),
            **extras.pop("metadata", {}),
        }
        out.append(
            ift.InstructionRecord(
                id=base if k is None else f"{base}#{k}",
                source=source.source_name,
                messages=messages,
                metadata=metadata,
                **extras,
            )
        )
    yield from out


class JsonlSource(FileSource):
    """JSON Lines: one object per line. UTF-8 (a BOM is accepted), LF or CRLF, blank lines ignored."""

    name = "jsonl"

    def records(self) -> Iterable[ift.InstructionRecord]:
        ift.check_data_file(self.path, "data file", f"(source {self.source_name!r})")
        self.stats = {}
        with self.path.open("rb") as handle:  # a first pass counts the rows, for max_bad_fraction
            total = sum(1 for raw in handle if raw.strip())
        return self._normalize(self._rows(total), total=total)

    def _rows(self, total: int) -> Iterator[dict[str, Any]]:
        """The file's objects, read line by line (the file is never held whole in memory)."""
        self._lines: list[int] = []
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                raw = raw.rstrip(b"\n")
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self.bad_row("invalid UTF-8", f"invalid UTF-8 (byte column {exc.start + 1})", number, total)
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    self.bad_row("invalid JSON", f"invalid JSON: {exc.msg} (column {exc.colno})", number, total)
                    continue
                if not isinstance(value, dict):
                    self.bad_row(
                        "not a JSON object", f"expected a JSON object, got {type(value).__name__}", number, total
                    )
                    continue
                self._lines.append(number)
                yield value

    def line_of(self, row_index: int) -> int | None:
        return self._lines[row_index] if row_index < len(self._lines) else None


class JsonSourceConfig(FileSourceConfig):
    field: str | None = Field(None, description="Key of the list of rows when the file is an object.")


class JsonSource(FileSource):
    """A JSON array of objects, or an object with the list of rows under ``field``."""

    name = "json"
    Config = JsonSourceConfig

    def _load(self) -> Any:
        import datasets

        datasets.disable_progress_bars()
        field = getattr(self.config, "field", None)
        return datasets.load_dataset("json", data_files=str(self.path), split="train", field=field)

    def check_file(self) -> None:
        try:
            json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ift.DataError(
                f"invalid JSON: {exc.msg} (column {exc.colno})", file=str(self.path), line=exc.lineno
            ) from None


class CsvSource(FileSource):
    """Comma-separated values with a header row."""

    name = "csv"
    builder = "csv"

    def check_file(self) -> None:
        """Record where each row starts: a quoted field may span lines, so row i is not always line i + 2."""
        import csv

        self._lines: list[int] = []
        with self.path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            try:
                next(reader)  # the header
                start = reader.line_num + 1
                for values in reader:
                    if values:  # blank lines are no rows (as the table reader skips them)
                        self._lines.append(start)
                    start = reader.line_num + 1
            except StopIteration:
                pass
            except (csv.Error, UnicodeDecodeError):
                self._lines = []  # the table reader reports the problem

    def line_of(self, row_index: int) -> int | None:
        lines = getattr(self, "_lines", None)
        if lines:
            return lines[row_index] if row_index < len(lines) else None
        return row_index + 2  # header is line 1


class ParquetSource(FileSource):
    """Apache Parquet."""

    name = "parquet"
    builder = "parquet"


class HubSourceConfig(SourceConfig):
    dataset: str = Field(description="Dataset id on the Hugging Face Hub, or a local dataset folder.")
    subset: str | None = None
    split: str = "train"
    revision: str | None = None


class HubSource(ift.InstructionSource):
    """A Hugging Face dataset by id; needs network unless it is already in the local cache."""

    name = "hf"
    Config = HubSourceConfig
    config: HubSourceConfig

    def records(self) -> Iterable[ift.InstructionRecord]:
        import datasets

        datasets.disable_progress_bars()
        cfg = self.config
        try:
            table = datasets.load_dataset(cfg.dataset, cfg.subset, split=cfg.split, revision=cfg.revision)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ift.DataError(f"cannot load dataset {cfg.dataset!r} (split {cfg.split!r}): {first}") from exc
        self._fingerprint = getattr(table, "_fingerprint", "")
        for i, row in enumerate(table):
            if cfg.limit is not None and i >= cfg.limit:
                break
            try:
                # a position, not a line (a dataset's rows need not be one file's lines): written [i], as for
                # JSON and Parquet files, so that no id ending in ":<number>" is anything but a real line
                yield from mapped_records(self, row, i, f"{cfg.dataset}:{cfg.split}[{i}]")
            except RowError as exc:
                raise ift.DataError(f"dataset {cfg.dataset!r} split {cfg.split!r} row [{i}] (0-based): {exc}") from None

    def content_fingerprint(self) -> str | None:
        # Only a pinned revision identifies the data before it is downloaded.
        return (
            f"{self.config.dataset}@{self.config.revision}:{self.config.subset}:{self.config.split}"
            if self.config.revision
            else None
        )

    def fingerprint(self) -> str:
        revision = self.config.revision or "default"
        return f"{self.config.dataset}@{revision}:{getattr(self, '_fingerprint', '')}"


@ift.hookimpl
def ift_register_sources() -> list[type]:
    return [JsonlSource, JsonSource, CsvSource, ParquetSource, HubSource]
