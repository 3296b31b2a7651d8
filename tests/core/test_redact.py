"""Credentials inside URLs (``https://user:token@host``) never reach what ift writes or prints: log records and
warnings of any library, status.json, events.jsonl, the manifest and the run-directory lock; and a plugin's own
traceback is shown only when asked for (``--traceback`` / ``IFT_TRACEBACK=1``)."""

from __future__ import annotations

import io
import json
import logging
import sys
import warnings
from pathlib import Path

import pytest

from ift.cli import main
from ift.redact import install
from ift.rundir import RunDirectory

TOKEN = "tok3nCANARY42"
ENDPOINT = f"https://hfuser:{TOKEN}@mirror.example:8443"


def test_log_records_of_any_library_are_masked() -> None:
    install()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("huggingface_hub.utils._http")  # logs the URL of every request it retries
    logger.addHandler(handler)
    try:
        logger.warning("'%s' thrown while requesting %s %s", "Connection refused", "HEAD", f"{ENDPOINT}/x/config.json")
        try:
            raise ConnectionError(f"proxy http://puser:{TOKEN}@proxy.example:3128 refused")
        except ConnectionError:
            logger.exception("download failed")
        logger.warning("no credentials in %s", "https://hub.example/a@b")  # left as it is
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert TOKEN not in text
    assert "'Connection refused' thrown while requesting HEAD https://***@mirror.example:8443/x/config.json" in text
    assert "ConnectionError: proxy http://***@proxy.example:3128 refused" in text and "Traceback" in text
    assert "no credentials in https://hub.example/a@b" in text


class TwoPartWarning(UserWarning):
    def __init__(self, what: str, where: str) -> None:  # not constructible from one string
        super().__init__(f"{what} {where}")


def test_warnings_are_masked() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        install()  # inside the block: catch_warnings restores the function it found when it ends
        warnings.warn(f"cannot reach {ENDPOINT}", UserWarning, stacklevel=1)
        warnings.warn("nothing secret here", UserWarning, stacklevel=1)
        warnings.warn(TwoPartWarning("cannot reach", ENDPOINT), stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "cannot reach https://***@mirror.example:8443",
        "nothing secret here",
        "cannot reach https://***@mirror.example:8443",
    ]
    assert [w.category for w in caught] == [UserWarning, UserWarning, TwoPartWarning]


def test_run_directory_records_are_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["ift", "run", "r.toml", "--set", f"run.notes={ENDPOINT}"])
    run = RunDirectory(tmp_path / "run")
    lock = (tmp_path / "run" / ".lock").read_text()
    run.event({"step": 1, "note": f"retrying {ENDPOINT}", "loss": 0.5})
    run.write_json("manifest.json", {"command": sys.argv, "sources": [{"url": ENDPOINT}]})
    run.write_json("metrics.json", {"samples": [{"generation": "ftp://anon@example.org"}]})  # model text as is
    run.status("failed", error=f"RuntimeError: cannot reach {ENDPOINT}")
    run.close()
    folder = tmp_path / "run"
    for name in (".lock", "events.jsonl", "manifest.json", "status.json"):
        assert TOKEN not in (folder / name).read_text(), name
    assert TOKEN not in lock and "run.notes=https://***@mirror.example:8443" in lock
    assert json.loads((folder / "events.jsonl").read_text()) == {
        "step": 1,
        "note": "retrying https://***@mirror.example:8443",
        "loss": 0.5,
    }
    assert (
        json.loads((folder / "status.json").read_text())["error"]
        == "RuntimeError: cannot reach https://***@mirror.example:8443"
    )
    assert json.loads((folder / "manifest.json").read_text())["sources"] == [{"url": "https://***@mirror.example:8443"}]
    assert "ftp://anon@example.org" in (folder / "metrics.json").read_text()


PLUGIN = """
import ift


class Explodes(ift.Transform):
    name = "explodes"

    def apply(self, records, tally):
        raise ValueError("boom from https://puser:TOKEN@db.example/x")


@ift.hookimpl
def ift_register_transforms():
    return [Explodes]
""".replace("TOKEN", TOKEN)


@pytest.fixture
def failing_data_recipe(tmp_path: Path) -> Path:
    (tmp_path / "shaky_plugin.py").write_text(PLUGIN)
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[plugins]\nlocal = ["shaky_plugin.py"]\n\n[[data]]\nsource = "jsonl"\npath = "d.jsonl"\n\n'
        '[[transforms]]\nname = "explodes"\n'
    )
    return recipe


def test_a_plugin_error_is_one_line_by_default(
    failing_data_recipe: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IFT_TRACEBACK", raising=False)
    assert main(["data", "build", str(failing_data_recipe), "-o", str(failing_data_recipe.parent / "o.jsonl")]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: plugin 'local:shaky_plugin'")
    assert "apply() raised ValueError: boom from https://***@db.example/x" in err and TOKEN not in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_plugins_own_traceback_when_asked(
    failing_data_recipe: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    args = ["data", "build", str(failing_data_recipe), "-o", str(failing_data_recipe.parent / "o.jsonl")]
    if how == "flag":
        monkeypatch.delenv("IFT_TRACEBACK", raising=False)
        args = ["--traceback", *args]
    else:
        monkeypatch.setenv("IFT_TRACEBACK", "1")
    assert main(args) == 4
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert 'shaky_plugin.py", line 9, in apply' in err  # the plugin's own frame
    assert "ValueError: boom from https://***@db.example/x" in err and TOKEN not in err
    assert "The above exception was the direct cause of the following exception" in err
    assert err.rstrip().splitlines()[-1].startswith("error: plugin 'local:shaky_plugin'")


def test_ift_plugins_masks_a_failed_plugins_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ift.host import PluginFailure, PluginHost

    init = PluginHost.__init__

    def with_a_failure(self: PluginHost, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.failures.append(
            PluginFailure(
                "dbplug",
                "ift-dbplug",
                "1.0",
                f"OperationalError: cannot reach postgresql://admin:{TOKEN}@db.example/x",
                "ift_dbplug:plugin",
            )
        )

    monkeypatch.setattr(PluginHost, "__init__", with_a_failure)
    for args in (["plugins"], ["plugins", "--json"]):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert TOKEN not in out and "postgresql://***@db.example/x" in out
