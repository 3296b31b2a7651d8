"""The ``sql`` source against real SQLite database files, through ift's public plugin host and recipe
validation: column mapping, formats, stable ids, credentials from the environment, fingerprints, errors."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import pytest

import ift
from ift.host import PluginHost
from ift.recipe import validate_recipe
from ift_sql import plugin
from ift_sql.plugin import SqlSource, SqlSourceConfig

pytest.importorskip("sqlalchemy")

MODEL = {"adapter": "causal-lm", "tokenizer": "byte-level", "from_config": {"model_type": "llama"}}


@pytest.fixture
def host():
    host = PluginHost(entry_points=False)
    host.register(plugin, "sql", distribution="ift-sql", version="test")
    yield host
    host.unregister("sql")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """tickets.db: a support table (question/answer), an alpaca table and a chat table with JSON turns."""
    path = tmp_path / "tickets.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE tickets (ticket_id INTEGER PRIMARY KEY, question TEXT, answer TEXT, product TEXT,
                                  approved INTEGER, priority INTEGER);
            CREATE TABLE alpaca (id TEXT PRIMARY KEY, instruction TEXT, input TEXT, output TEXT);
            CREATE TABLE chats (id INTEGER PRIMARY KEY, turns TEXT, label TEXT, choices TEXT);
        """)
        conn.executemany(
            "INSERT INTO tickets VALUES (?, ?, ?, ?, ?, ?)",
            [
                (17, "How do I get a refund?", "Open Billing > Refunds.", "billing", 1, 2),
                (4, "Where is my invoice?", "Under Billing > Invoices.", "billing", 1, 1),
                (9, "Can I change my plan?", "Yes, in Settings.", "plans", 0, 3),
                (12, "How many seats do I have?", 5, "plans", 1, 1),
            ],
        )
        conn.execute("INSERT INTO alpaca VALUES ('a1', 'Translate to French', 'cat', 'chat')")
        conn.execute(
            "INSERT INTO chats VALUES (1, ?, 'positive', ?)",
            (
                json.dumps(
                    [{"role": "user", "content": "Great product!"}, {"role": "assistant", "content": "positive"}]
                ),
                '["positive", "negative"]',
            ),
        )
    return path


def source(tmp_path: Path, **config) -> SqlSource:
    return SqlSource(SqlSourceConfig(**config), source_name="support", base_dir=tmp_path)


TICKETS = dict(
    url="tickets.db",
    id_column="ticket_id",
    columns={"prompt": "question", "completion": "answer"},
    query="SELECT ticket_id, question, answer, product FROM tickets WHERE approved = 1 ORDER BY ticket_id",
)


def test_prompt_completion_columns_with_stable_ids_and_metadata(tmp_path, db):
    records = list(source(tmp_path, **TICKETS, metadata_columns=["product"]).records())
    assert [r.id for r in records] == ["4", "12", "17"]
    assert records[2].to_dict() == {
        "id": "17",
        "source": "support",
        "task": None,
        "label": None,
        "choices": None,
        "metadata": {"product": "billing"},
        "messages": [
            {"role": "user", "content": "How do I get a refund?"},
            {"role": "assistant", "content": "Open Billing > Refunds."},
        ],
    }
    assert records[1].answer == "5"  # an integer answer column is the answer's text


def test_alpaca_columns_are_detected_and_system_prompt_added(tmp_path, db):
    (record,) = source(tmp_path, url=f"sqlite:///{db}", query="SELECT * FROM alpaca", system="Be brief.").records()
    assert record.id == "a1"
    assert [(m.role, m.content) for m in record.messages] == [
        ("system", "Be brief."),
        ("user", "Translate to French\n\ncat"),
        ("assistant", "chat"),
    ]


def test_messages_json_column_with_label_and_choices(tmp_path, db):
    (record,) = source(
        tmp_path,
        url="tickets.db",
        query="SELECT id, turns, label, choices FROM chats",
        columns={"messages": "turns"},
        format="messages",
    ).records()
    assert [m.content for m in record.messages] == ["Great product!", "positive"]
    assert record.label == "positive" and record.choices == ["positive", "negative"]


def test_bound_parameters_and_limit(tmp_path, db):
    config = {
        **TICKETS,
        "query": "SELECT * FROM tickets WHERE product = :product ORDER BY ticket_id",
        "params": {"product": "plans"},
    }
    assert [r.id for r in source(tmp_path, **config).records()] == ["9", "12"]
    assert [r.id for r in source(tmp_path, **config, limit=1).records()] == ["9"]


def test_url_from_environment(tmp_path, db, monkeypatch):
    monkeypatch.setenv("TICKETS_DB_URL", f"sqlite:///{db}")
    config = {**TICKETS, "url": None, "url_env": "TICKETS_DB_URL"}
    assert len(list(source(tmp_path, **config).records())) == 3
    monkeypatch.delenv("TICKETS_DB_URL")
    with pytest.raises(ift.DataError, match="environment variable TICKETS_DB_URL is not set"):
        list(source(tmp_path, **config).records())


def test_password_comes_from_environment_and_is_never_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("SUPPORT_DB_PASSWORD", "s3cr3t-pw")
    src = source(
        tmp_path,
        url="postgresql://reader@db.internal:5432/support",
        password_env="SUPPORT_DB_PASSWORD",
        query="SELECT 1",
    )
    url = src.database_url()
    assert url.password == "s3cr3t-pw" and url.username == "reader"
    assert "s3cr3t-pw" not in url.render_as_string(hide_password=True)


def test_recipe_with_inline_password_is_refused_without_echoing_it(host, tmp_path):
    raw = {
        "data": [{"source": "sql", "url": "postgresql://reader:hunter22@db/prod", "query": "SELECT 1"}],
        "model": MODEL,
    }
    with pytest.raises(ift.RecipeError) as err:
        validate_recipe(raw, host, base_dir=tmp_path)
    assert "data[0].url: the URL contains a password" in str(err.value)
    with pytest.raises(ValueError) as direct:  # also when the plugin is used without ift's recipe checks
        SqlSourceConfig(url="postgresql://reader:hunter22@db/prod", query="SELECT 1")
    assert "contains a password" in str(direct.value) and "hunter22" not in str(direct.value)


def test_recipe_keys_are_validated(host, tmp_path):
    raw = {
        "data": [
            {
                "source": "sql",
                "url": "x.db",
                "url_env": "X",
                "query": "SELECT 1",
                "colums": {},
                "columns": {"answer": "a"},
            }
        ],
        "model": MODEL,
    }
    with pytest.raises(ift.RecipeError) as err:
        validate_recipe(raw, host, base_dir=tmp_path)
    text = str(err.value)
    assert "data[0].colums: unknown key (did you mean 'columns'?)" in text
    assert "data[0].columns: unknown record field(s) 'answer'" in text
    assert host.get("source", "sql").distribution == "ift-sql"


def test_bad_sql_names_the_query(tmp_path, db):
    with pytest.raises(ift.DataError) as err:
        list(source(tmp_path, **{**TICKETS, "query": "SELECT * FROM tikets"}).records())
    assert "source 'support': SQL query failed on sqlite:///" in str(err.value)
    assert "no such table: tikets" in str(err.value) and "query: SELECT * FROM tikets" in str(err.value)


def test_missing_column_lists_what_the_query_returns(tmp_path, db):
    with pytest.raises(ift.DataError) as err:
        list(source(tmp_path, **{**TICKETS, "query": "SELECT ticket_id, question FROM tickets"}).records())
    assert "the query returns no column 'answer' (named by columns.completion); it returns: ticket_id, question" in str(
        err.value
    )
    with pytest.raises(ift.DataError, match="no column 'id' \\(named by id_column\\)"):
        list(
            source(
                tmp_path, url="tickets.db", query="SELECT question AS prompt, answer AS completion FROM tickets"
            ).records()
        )


def test_missing_driver_or_unknown_database_is_a_data_error(tmp_path):
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("needs an environment without the mysqlclient driver")
    with pytest.raises(ift.DataError, match="no database driver for mysql \\(No module named 'MySQLdb'\\)"):
        list(source(tmp_path, url="mysql://reader@localhost/support", query="SELECT 1").records())
    with pytest.raises(ift.DataError, match=r"cannot use nosuchdb://\*\*\*@h/x: Can't load plugin"):
        list(source(tmp_path, url="nosuchdb://reader@h/x", query="SELECT 1").records())


def test_missing_database_file_is_not_created(tmp_path):
    with pytest.raises(ift.DataError, match="SQLite database file not found"):
        list(source(tmp_path, **{**TICKETS, "url": "nope.db"}).records())
    assert not (tmp_path / "nope.db").exists()


def test_a_database_path_that_is_a_folder_or_a_symlink_loop_is_named(tmp_path):
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "a.db").symlink_to(tmp_path / "b.db")
    (tmp_path / "b.db").symlink_to(tmp_path / "a.db")
    with pytest.raises(ift.DataError) as info:
        list(source(tmp_path, **{**TICKETS, "url": "folder.db"}).records())
    assert (
        str(info.value) == f"{tmp_path / 'folder.db'}: SQLite database file is a directory; give the path of a "
        "file inside it (source 'support')"
    )
    with pytest.raises(ift.DataError, match=r"a.db: SQLite database file is a symlink loop"):
        list(source(tmp_path, **{**TICKETS, "url": "sqlite:///a.db"}).records())


def test_bad_json_and_missing_answer_name_the_row(tmp_path, db):
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO chats VALUES (2, '[{\"role\": ', NULL, NULL)")
        conn.execute("INSERT INTO tickets VALUES (30, 'Hello?', NULL, 'plans', 1, 1)")
    with pytest.raises(ift.DataError, match="row with id = 2: column 'turns' is not valid JSON"):
        list(source(tmp_path, url="tickets.db", query="SELECT * FROM chats", columns={"messages": "turns"}).records())
    with pytest.raises(ift.DataError, match="row with ticket_id = 30: missing field 'completion'"):
        list(source(tmp_path, **TICKETS).records())


def test_content_fingerprint_only_with_a_snapshot(tmp_path, db):
    assert source(tmp_path, **TICKETS).content_fingerprint() is None  # a live table: the cache steps aside
    pinned = source(tmp_path, **TICKETS, snapshot="2026-11-01").content_fingerprint()
    assert pinned and pinned == source(tmp_path, **TICKETS, snapshot="2026-11-01").content_fingerprint()
    assert pinned != source(tmp_path, **TICKETS, snapshot="2026-11-02").content_fingerprint()
    by_query = {**TICKETS, "snapshot_query": "SELECT count(*), max(ticket_id) FROM tickets"}
    before = source(tmp_path, **by_query).content_fingerprint()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO tickets VALUES (40, 'New?', 'Yes.', 'plans', 1, 1)")
    assert source(tmp_path, **by_query).content_fingerprint() != before


def test_manifest_fingerprint_follows_the_rows_read(tmp_path, db):
    src = source(tmp_path, **TICKETS)
    list(src.records())
    first = src.fingerprint()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tickets SET answer = 'Billing > Refunds.' WHERE ticket_id = 17")
    again = source(tmp_path, **TICKETS)
    list(again.records())
    assert first.startswith("sha256:") and again.fingerprint() != first
