"""Inputs that used to end in a traceback, a hang or a leaked secret end in one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ift
from ift.cli import main
from ift.errors import RecipeError
from ift.files import check_data_file
from ift.host import PluginHost
from ift.recipe import apply_override, read_toml, validate_recipe
from ift.redact import redact

MODEL = {"adapter": "causal-lm", "name_or_path": "x"}


def test_a_recipe_that_is_not_utf8_is_a_recipe_error(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_bytes(b'[run]\nname = "caf\xe9"\n')
    with pytest.raises(RecipeError) as info:
        read_toml(path)
    assert (
        str(info.value) == f"{path}: invalid recipe: not valid UTF-8 (byte 0xe9 at line 2, column 12); "
        "save the recipe as UTF-8"
    )
    assert main(["validate", str(path)]) == 2


def test_set_indexing_a_list_by_name_is_named() -> None:
    raw = {"data": [{"source": "jsonl"}], "trainer": {"epochs": 1}}
    with pytest.raises(RecipeError) as info:
        apply_override(raw, "data.name=x")
    assert (
        str(info.value) == "invalid recipe: --set data.name: data is a list of 1 table(s); index it by "
        "number, e.g. data.0.name or data[0].name"
    )
    with pytest.raises(RecipeError, match="trainer is a table, not a list; it has no item 0"):
        apply_override(raw, "trainer.0=x")


def test_data_file_kinds_are_named(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken")
    cases = {
        "folder": "data file is a directory; give the path of a file inside it",
        "a": "data file is a symlink loop (the links point at each other)",
        "broken": f"data file is a broken symlink (it points to {str(tmp_path / 'nowhere')!r}, which does not exist)",
        "absent": "data file not found",
    }
    for name, message in cases.items():
        with pytest.raises(ift.DataError) as info:
            check_data_file(tmp_path / name, "data file", "(source 's')")
        assert str(info.value) == f"{tmp_path / name}: {message} (source 's')"


def test_a_secret_is_refused_and_never_echoed_by_another_key(host: PluginHost) -> None:
    secret = "hf_" + "A" * 34
    raw = {
        "data": [{"source": "jsonl", "path": "a.jsonl", "weight": secret, "api_key": secret}],
        "model": MODEL,
        "trainer": {"epochs": secret},
    }
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw, host, base_dir=Path("."))
    message = str(info.value)
    assert "looks like a secret" in message and "trainer.epochs" in message and "data[0].weight" in message
    assert secret not in message and "AAAAAAAAAA" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cannot reach https://user:tok3n@hub.example/api", "cannot reach https://***@hub.example/api"),
        ("HF_ENDPOINT=https://tok3n@mirror.local", "HF_ENDPOINT=https://***@mirror.local"),
        ("proxy http://u:p@proxy:3128 failed", "proxy http://***@proxy:3128 failed"),
        ("postgresql://admin:s3cret@db:5432/x", "postgresql://***@db:5432/x"),
        ("https://hub.example/a@b", "https://hub.example/a@b"),  # an @ in the path is no credential
        ("token hf_" + "x" * 34, "token ***"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_error_output_never_carries_url_credentials() -> None:
    error = ift.DataError("cannot load from https://user:tok3n@hub.example/d", file="x.jsonl")
    assert "tok3n" not in str(error) and "https://***@hub.example/d" in str(error)


def test_validate_agrees_that_data_recipes_need_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (tmp_path / "r.toml").write_text('[[data]]\nsource = "jsonl"\npath = "d.jsonl"\n')
    assert main(["validate", str(tmp_path / "r.toml")]) == 0
    assert "valid as a data recipe (1 data source(s), 0 transform(s))" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "r.toml"), "-o", str(tmp_path / "out")]) == 2
    assert "model: missing: training needs a [model] table" in capsys.readouterr().err


def test_a_bugs_traceback_masks_url_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    import click

    from ift.cli import cli

    @cli.command("explode-for-test")
    def explode() -> None:
        raise RuntimeError("proxy https://user:tok3n@proxy.local:3128 refused")

    try:
        assert main(["explode-for-test"]) == 1
    finally:
        cli.commands.pop("explode-for-test")
    err = capsys.readouterr().err
    assert "tok3n" not in err and "https://***@proxy.local:3128" in err and "Traceback" in err
    assert isinstance(explode, click.Command)


@pytest.mark.parametrize("kind", ["directory", "loop"])
@pytest.mark.parametrize("source", ["jsonl", "csv", "json", "parquet"])
def test_a_data_path_that_is_no_file_is_named_by_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, source: str
) -> None:
    path = tmp_path / f"train.{source}"
    if kind == "directory":
        path.mkdir()
        said = "data file is a directory; give the path of a file inside it"
    else:
        os.symlink(tmp_path / "other", path)
        os.symlink(path, tmp_path / "other")
        said = "data file is a symlink loop (the links point at each other)"
    (tmp_path / "r.toml").write_text(f'[[data]]\nsource = "{source}"\nname = "train"\npath = "{path.name}"\n')
    assert main(["data", "build", str(tmp_path / "r.toml"), "-o", str(tmp_path / "o.jsonl")]) == 3
    assert capsys.readouterr().err == f"error: {path}: {said} (source 'train')\n"
