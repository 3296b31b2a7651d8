"""Credentials inside URLs in the environment (``HF_ENDPOINT``, proxy variables, a database URL a plugin source
reads) never reach status.json, the manifest, events.jsonl, the lock, stdout or stderr: through failing runs in
real subprocesses, with the real huggingface_hub (which logs every URL it retries) and the real ift-sql plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"hub": "hubTOKENcanary901", "proxy": "proxyTOKENcanary902", "db": "dbTOKENcanary903"}
URL_ENV = {
    "HF_ENDPOINT": f"https://hfuser:{TOKENS['hub']}@127.0.0.1:9",  # port 9: connection refused at once
    "HTTPS_PROXY": f"http://puser:{TOKENS['proxy']}@127.0.0.1:9",
    "HTTP_PROXY": f"http://puser:{TOKENS['proxy']}@127.0.0.1:9",
    "ALL_PROXY": f"http://puser:{TOKENS['proxy']}@127.0.0.1:9",
    "SUPPORT_DB_URL": f"postgresql://dbuser:{TOKENS['db']}@127.0.0.1:9/support",
}
TAIL = """
[template]
name = "alpaca"

[trainer]
max_steps = 2
batch_size = 2
max_length = 64

[eval]
fraction = 0.25
metrics = ["loss"]
baseline = false
"""
TINY = (
    '[model]\nadapter = "causal-lm"\ntokenizer = "byte-level"\nfrom_config = { model_type = "llama", '
    "hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2 }\n"
)
# huggingface_hub sleeps between its 5 retries (1 + 2 + 4 + 8 + 8 s); the test keeps its requests and logs, not
# the waiting
NO_SLEEP = "import sys, time; time.sleep = lambda s: None; from ift.cli import main; sys.exit(main(sys.argv[1:]))"


def ift(args: list[str], cwd: Path, *, online: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not (online and k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))}
    env.update(URL_ENV, IFT_NO_CACHE="1", IFT_DISABLE_ENTRY_POINTS="1", NO_PROXY="", no_proxy="")
    return subprocess.run(
        [sys.executable, "-c", NO_SLEEP, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def assert_never_written(result: subprocess.CompletedProcess[str], folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file() and p.name not in ("r.toml", "data.jsonl")]  # not inputs
    for token in TOKENS.values():
        assert token not in result.stdout and token not in result.stderr
        assert [p for p in files if token.encode() in p.read_bytes()] == []
    return files


@pytest.fixture
def work(tmp_path: Path) -> Path:
    rows = [{"instruction": f"Spell {w}", "output": " ".join(w)} for w in ["cat", "dog", "sun", "map", "red", "toy"]]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_a_hub_model_behind_a_credentialed_endpoint(work: Path) -> None:
    (work / "r.toml").write_text(
        '[[data]]\nsource = "jsonl"\npath = "data.jsonl"\n\n[model]\nadapter = '
        '"causal-lm"\nname_or_path = "someorg/somemodel"\n' + TAIL
    )
    result = ift(["run", "r.toml", "-o", "run"], work, online=True)
    assert result.returncode == 5, result.stderr
    files = assert_never_written(result, work)
    assert {"status.json", "manifest.json", "events.jsonl", ".lock"} <= {p.name for p in files}
    status = json.loads((work / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "https://***@127.0.0.1:9" in status["error"]
    # huggingface_hub's own retry warnings reached stderr, masked
    assert "thrown while requesting" in result.stderr and "https://***@127.0.0.1:9/someorg" in result.stderr


@pytest.fixture
def sql_plugin() -> str:
    pytest.importorskip("sqlalchemy")
    return str(ROOT / "plugins" / "ift-sql" / "src" / "ift_sql" / "plugin.py")


def test_a_database_url_from_the_environment(work: Path, sql_plugin: str) -> None:
    (work / "r.toml").write_text(
        f'[plugins]\nlocal = ["{sql_plugin}"]\n\n[[data]]\nsource = "sql"\n'
        'url_env = "SUPPORT_DB_URL"\nquery = "SELECT id, q AS prompt, a AS completion FROM t"'
        f"\n\n{TINY}{TAIL}"
    )
    for traceback in ([], ["--traceback"]):  # the traceback a user asks for is masked too
        result = ift([*traceback, "run", "r.toml", "-o", "run", "--overwrite"], work)
        assert result.returncode == 3, result.stderr
        assert_never_written(result, work)
        status = json.loads((work / "run" / "status.json").read_text())
        assert status["status"] == "failed" and "no database driver for postgresql" in status["error"]
    assert "Traceback" in result.stderr


def test_a_database_url_with_a_password_in_the_recipe_is_refused_unechoed(work: Path, sql_plugin: str) -> None:
    (work / "r.toml").write_text(
        f'[plugins]\nlocal = ["{sql_plugin}"]\n\n[[data]]\nsource = "sql"\n'
        f'url = "postgresql://dbuser:{TOKENS["db"]}@db.example/support"\n'
        f'query = "SELECT 1"\n\n{TINY}{TAIL}'
    )
    for command in (
        ["run", "r.toml", "-o", "run"],
        ["validate", "r.toml"],
        ["run", "r.toml", "-o", "run2", "--set", f"data.0.url=mysql://u:{TOKENS['db']}@h/x"],
    ):
        result = ift(command, work)
        assert result.returncode == 2, result.stderr
        assert "data[0].url: looks like a secret" in result.stderr
        assert_never_written(result, work)
    assert not (work / "run").exists() and not (work / "run2").exists()
