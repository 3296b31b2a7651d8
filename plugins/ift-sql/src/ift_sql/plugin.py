"""``source = "sql"``: instruction records from a SQL query, through SQLAlchemy, from any database it can
reach (SQLite is built into Python; other databases need their driver, e.g. ``psycopg``).

Credentials never live in the recipe (recipes are copied into run directories and shared): the recipe names
an environment variable holding the whole URL (``url_env``) or the password (``password_env``), and a ``url``
with an inline password is refused.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

import ift
from ift.files import check_data_file
from ift.records import RowError, normalize_row

#: Record fields a column can be mapped to (``columns = { prompt = "question", completion = "answer" }``).
FIELDS = ("prompt", "completion", "instruction", "input", "output", "messages", "system", "task", "label", "choices")
_JSON_FIELDS = ("messages", "choices")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SqlSourceConfig(ift.ComponentConfig):
    model_config = ConfigDict(**ift.ComponentConfig.model_config, hide_input_in_errors=True)  # URLs stay unshown

    url: str | None = Field(
        None,
        description="SQLAlchemy URL without a password (postgresql://reader@db/prod), "
        "or a SQLite file path relative to the recipe's folder.",
    )
    url_env: str | None = Field(
        None, pattern=_ENV_NAME, description="Environment variable holding the whole URL, credentials included."
    )
    password_env: str | None = Field(
        None, pattern=_ENV_NAME, description="Environment variable holding the password for `url`."
    )
    query: str = Field(description="A query returning one row per record.")
    params: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="Values bound to :name placeholders in the query."
    )
    format: Literal["auto", "alpaca", "prompt-completion", "messages"] = "auto"
    columns: dict[str, str] = Field(
        default_factory=dict, description="Record field -> column, for columns not named like the field."
    )
    id_column: str = Field("id", description="Column with a stable unique id per row (e.g. the primary key).")
    metadata_columns: list[str] = Field(default_factory=list, description="Columns copied into record metadata.")
    system: str | None = Field(None, description="System prompt added to records that have none.")
    limit: int | None = Field(None, gt=0, description="Read at most this many rows.")
    snapshot: str | None = Field(
        None,
        description="A version you vouch for (a snapshot date, a release tag). "
        "With it, ift may reuse prepared data; without, it re-reads.",
    )
    snapshot_query: str | None = Field(
        None,
        description="A query whose result changes whenever the data does "
        "(SELECT max(updated_at), count(*) FROM t); same effect.",
    )

    @field_validator("url")
    @classmethod
    def _no_inline_password(cls, url: str | None) -> str | None:
        if url is None or "://" not in url:
            return url
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError("not a valid SQLAlchemy URL (dialect+driver://user@host/database)") from None
        if parsed.password is not None:  # the message must not repeat the URL: it holds the password
            raise ValueError(
                "the URL contains a password; recipes are shared, so remove it and set "
                'password_env = "NAME" (an environment variable holding it), or put the whole URL '
                "in an environment variable named by url_env"
            )
        return url

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(columns) - set(FIELDS))
        if unknown:
            raise ValueError(
                f"unknown record field(s) {', '.join(map(repr, unknown))}; map columns to: {', '.join(FIELDS)}"
            )
        return columns

    @model_validator(mode="after")
    def _one_url(self) -> SqlSourceConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("set exactly one of url (no password) and url_env (an environment variable name)")
        if self.password_env and not self.url:
            raise ValueError("password_env fills the password of url; with url_env the URL carries it")
        return self


class SqlSource(ift.InstructionSource):
    """One record per row of ``query``. Ids come from ``id_column``; errors name the source and the query."""

    name = "sql"
    Config = SqlSourceConfig
    config: SqlSourceConfig

    # --- connection ------------------------------------------------------------------------------

    def database_url(self) -> Any:
        """The ``sqlalchemy.URL`` to connect to, with the password from the environment where named."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        cfg = self.config
        if cfg.url_env:
            value = self._env(cfg.url_env, "the database URL")
            try:
                return make_url(value)
            except ArgumentError:
                raise ift.DataError(
                    f"source {self.source_name!r}: environment variable {cfg.url_env} does not "
                    "hold a valid SQLAlchemy URL"
                ) from None
        assert cfg.url is not None
        if "://" not in cfg.url:  # a bare path: the embedded SQLite default
            url = make_url("sqlite://").set(database=str(self._resolve(cfg.url)))
        else:
            url = make_url(cfg.url)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                url = url.set(database=str(self._resolve(url.database)))
        if cfg.password_env:
            url = url.set(password=self._env(cfg.password_env, "the database password"))
        return url

    def _resolve(self, path: str) -> Path:
        file = Path(path).expanduser()
        file = file if file.is_absolute() else self.base_dir / file
        # SQLite would silently create an empty database; a directory or a symlink loop is named as what it is
        check_data_file(file, "SQLite database file", f"(source {self.source_name!r})")
        return file

    def _env(self, name: str, what: str) -> str:
        value = os.environ.get(name)
        if not value:
            raise ift.DataError(
                f"source {self.source_name!r}: environment variable {name} is not set; it must hold {what}"
            )
        return value

    @contextmanager
    def _execute(self, query: str, params: dict[str, Any]) -> Iterator[Any]:
        """The result of ``query`` (rows stream while it is open); SQL and connection errors become a DataError."""
        from sqlalchemy import create_engine, text
        from sqlalchemy.exc import SQLAlchemyError

        url = self.database_url()
        shown = url.render_as_string(hide_password=True)
        try:
            engine = create_engine(url)
        except ImportError as exc:  # the dialect is known, its DBAPI driver is not installed
            raise ift.DataError(
                f"source {self.source_name!r}: no database driver for {url.drivername} "
                f"({exc}); install it (e.g. psycopg for postgresql, pymysql for mysql)"
            ) from None
        except SQLAlchemyError as exc:
            raise ift.DataError(f"source {self.source_name!r}: cannot use {shown}: {exc}") from None
        try:
            with engine.connect() as conn:
                yield conn.execution_options(stream_results=True, yield_per=1000).execute(text(query), params)
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise ift.DataError(
                f"source {self.source_name!r}: SQL query failed on {shown}: {reason}\n"
                f"  query: {' '.join(query.split())}"
            ) from None
        finally:
            engine.dispose()

    # --- records ---------------------------------------------------------------------------------

    def records(self) -> Iterator[ift.InstructionRecord]:
        cfg = self.config
        digest = hashlib.sha256()
        with self._execute(cfg.query, cfg.params) as result:
            mapping = self._column_mapping(list(result.keys()))
            for i, row in enumerate(result.mappings()):
                if cfg.limit is not None and i >= cfg.limit:
                    break
                record = self._record(row, mapping)
                digest.update(json.dumps(record.to_dict(), sort_keys=True, default=str).encode())
                yield record
        self._rows_digest = "sha256:" + digest.hexdigest()[:16]

    def _column_mapping(self, returned: list[str]) -> dict[str, str]:
        """Record field -> column, for the fields the query returns; a missing named column is an error."""
        cfg = self.config
        needed = {
            "id_column": cfg.id_column,
            **{f"columns.{k}": v for k, v in cfg.columns.items()},
            **{f"metadata_columns[{i}]": c for i, c in enumerate(cfg.metadata_columns)},
        }
        for key, column in needed.items():
            if column not in returned:
                raise ift.DataError(
                    f"source {self.source_name!r}: the query returns no column {column!r} "
                    f"(named by {key}); it returns: {', '.join(returned)}\n"
                    f"  query: {' '.join(cfg.query.split())}"
                )
        return {field: cfg.columns.get(field, field) for field in FIELDS if cfg.columns.get(field, field) in returned}

    def _record(self, row: Any, mapping: dict[str, str]) -> ift.InstructionRecord:
        cfg = self.config
        row_id = row[cfg.id_column]
        where = f"source {self.source_name!r}, row with {cfg.id_column} = {row_id!r}"
        if row_id is None:
            raise ift.DataError(f"source {self.source_name!r}: a row has NULL in id column {cfg.id_column!r}")
        values: dict[str, Any] = {}
        for field, column in mapping.items():
            value = row[column]
            if field in _JSON_FIELDS and isinstance(value, (str, bytes)):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise ift.DataError(f"{where}: column {column!r} is not valid JSON ({exc.msg})") from None
            elif isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
                value = str(value)  # a numeric answer column is still the answer's text
            values[field] = value
        system = values.pop("system", None) or cfg.system
        try:
            messages, extras = normalize_row(values, cfg.format, system=system)
        except RowError as exc:
            raise ift.DataError(f"{where}: {exc}") from None
        metadata = {c: _plain(row[c]) for c in cfg.metadata_columns}
        return ift.InstructionRecord(
            id=str(row_id), source=self.source_name, messages=messages, metadata=metadata, **extras
        )

    # --- fingerprints ----------------------------------------------------------------------------

    def content_fingerprint(self) -> str | None:
        """Known before reading only when the recipe vouches for a version (``snapshot``) or names a query
        that tells one (``snapshot_query``); a live table may change between runs, so None otherwise."""
        cfg = self.config
        if cfg.snapshot is None and cfg.snapshot_query is None:
            return None
        parts: list[Any] = [self.database_url().render_as_string(hide_password=True), cfg.snapshot]
        if cfg.snapshot_query is not None:
            with self._execute(cfg.snapshot_query, cfg.params) as result:
                parts.append([[_plain(v) for v in row] for row in result])
        return "sql:" + hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        """A hash of the records read (for the manifest), or of the settings before reading."""
        return getattr(self, "_rows_digest", None) or super().fingerprint()


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


@ift.hookimpl
def ift_register_sources() -> list[type]:
    return [SqlSource]
