"""Builtin instruction sources: local files (JSONL, JSON, CSV, Parquet) and Hugging Face Hub datasets,
all read through ``datasets``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

import ift
from ift.records import RowError, normalize_row


class SourceConfig(ift.ComponentConfig):
    format: str = Field("auto", description="alpaca, messages, sharegpt, prompt-completion or auto.")
    system: str | None = Field(None, description="System prompt added to records that have none.")
    limit: int | None = Field(None, gt=0, description="Read at most this many rows.")


class FileSourceConfig(SourceConfig):
    path: str = Field(description="File path, relative to the recipe's folder.")


class FileSource(ift.InstructionSource):
    """Rows from a local file, one record per row. Errors name the file and the line."""

    Config = FileSourceConfig
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
        if not path.is_file():
            raise ift.DataError(f"data file not found (source {self.source_name!r})", file=str(path))
        self.check_file()
        try:
            table = self._load()
        except Exception as exc:  # datasets/pyarrow messages are long; keep the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ift.DataError(f"cannot read as {self.name}: {first}", file=str(path)) from exc
        return self._normalize(table)

    def check_file(self) -> None:
        """Find syntax errors with a line number before ``datasets`` reports them without one."""

    def _normalize(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[ift.InstructionRecord]:
        prefix = self.path.name
        for i, row in enumerate(rows):
            if self.config.limit is not None and i >= self.config.limit:
                break
            try:
                messages, extras = normalize_row(row, self.config.format, system=self.config.system)
            except RowError as exc:
                line = self.line_of(i)
                raise ift.DataError(str(exc) if line else f"row {i}: {exc}", file=str(self.path),
                                    line=line) from None
            row_id = row.get("id")
            yield ift.InstructionRecord(
                id=str(row_id) if row_id is not None else f"{prefix}:{i}",
                source=self.source_name, messages=messages,
                metadata={"row": i, **extras.pop("metadata", {})}, **extras)


class JsonlSource(FileSource):
    """JSON Lines: one object per line."""

    name = "jsonl"

    def check_file(self) -> None:
        self._lines: list[int] = []
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ift.DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=str(self.path),
                                        line=number) from None
                if not isinstance(value, dict):
                    raise ift.DataError(f"expected a JSON object, got {type(value).__name__}",
                                        file=str(self.path), line=number)
                self._lines.append(number)

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
            raise ift.DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=str(self.path),
                                line=exc.lineno) from None


class CsvSource(FileSource):
    """Comma-separated values with a header row."""

    name = "csv"
    builder = "csv"

    def line_of(self, row_index: int) -> int | None:
        return row_index + 2  # header is line 1; exact unless fields contain newlines


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
                messages, extras = normalize_row(row, cfg.format, system=cfg.system)
            except RowError as exc:
                raise ift.DataError(f"dataset {cfg.dataset!r} row {i}: {exc}") from None
            row_id = row.get("id")
            yield ift.InstructionRecord(id=str(row_id) if row_id is not None else f"{cfg.dataset}:{cfg.split}:{i}",
                                        source=self.source_name, messages=messages,
                                        metadata={"row": i, **extras.pop("metadata", {})}, **extras)

    def content_fingerprint(self) -> str | None:
        # Only a pinned revision identifies the data before it is downloaded.
        return f"{self.config.dataset}@{self.config.revision}:{self.config.subset}:{self.config.split}" \
            if self.config.revision else None

    def fingerprint(self) -> str:
        revision = self.config.revision or "default"
        return f"{self.config.dataset}@{revision}:{getattr(self, '_fingerprint', '')}"


@ift.hookimpl
def ift_register_sources() -> list[type]:
    return [JsonlSource, JsonSource, CsvSource, ParquetSource, HubSource]
