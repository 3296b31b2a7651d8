"""``ift init plugin``: the generated distribution installs, registers through the ``ift`` entry-point group,
and its own tests (ift.testing's contract suites and an end-to-end run) pass; bad names and occupied folders
are refused with a clear message and exit code 2, writing nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ift.cli import main
from ift.errors import EXIT_RECIPE
from ift.host import PluginHost

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ALL_KINDS = ["source", "transform", "renderer", "metric", "trainer", "peft_method"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scaffold") / "ift-demo-kit"
    args = ["init", "plugin", "demo-kit", "--output-dir", str(folder)]
    for kind in ALL_KINDS:
        args += ["--kind", kind]
    assert main(args) == 0
    return folder


def test_writes_the_package_layout(generated: Path) -> None:
    files = sorted(p.relative_to(generated).as_posix() for p in generated.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        *[
            f"src/ift_demo_kit/{name}.py"
            for name in ["__init__", "metric", "peft_method", "plugin", "renderer", "source", "trainer", "transform"]
        ],
        "tests/conftest.py",
        "tests/test_plugin.py",
    ]
    readme = (generated / "README.md").read_text()
    assert 'source = "demo-kit-qa-jsonl"' in readme and "pip install -e" in readme
    assert 'pytest_plugins = ["ift.testing"]' in (generated / "tests" / "conftest.py").read_text()


def test_pyproject_declares_the_ift_entry_point(generated: Path) -> None:
    project = tomllib.loads((generated / "pyproject.toml").read_text())
    assert project["project"]["name"] == "ift-demo-kit"
    assert project["project"]["entry-points"] == {"ift": {"demo-kit": "ift_demo_kit.plugin"}}
    assert any(re.fullmatch(r"ift>=[\d.]+", d) for d in project["project"]["dependencies"])
    assert project["tool"]["setuptools"]["packages"]["find"] == {"where": ["src"]}


def test_generated_tests_pass(generated: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(generated / "src"), "IFT_DISABLE_ENTRY_POINTS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'pt'}"],
        cwd=generated,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))  # type: ignore[union-attr]
    assert passed >= 45 and not re.search(r"failed|error|skipped", summary), summary


def test_the_plugin_registers_every_component_on_a_host(generated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(generated / "src"))
    from ift_demo_kit import plugin

    host = PluginHost(entry_points=False)
    host.register(plugin, "demo-kit", distribution="ift-demo-kit")
    registered = {kind: names for kind, names in host.describe()[-1]["registered"].items()}
    assert registered == {
        "source": ["demo-kit-qa-jsonl"],
        "transform": ["demo-kit-normalize"],
        "renderer": ["demo-kit-qa"],
        "metric": ["demo-kit-contains"],
        "trainer": ["demo-kit-sft-l2sp"],
        "peft_method": ["demo-kit-lokr"],
    }


def test_installed_distribution_is_found_through_its_entry_point(generated: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(generated),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site), "IFT_LOAD_PLUGINS": "demo-kit"}
    result = subprocess.run(
        [sys.executable, "-m", "ift.cli", "plugins", "--json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert listed["demo-kit"]["distribution"] == "ift-demo-kit"
    assert listed["demo-kit"]["origin"] == "entry-point"
    assert listed["demo-kit"]["registered"]["metric"] == ["demo-kit-contains"]


def test_default_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "plugin", "ift-small", "-o", str(tmp_path / "p")]) == 0
    package = tmp_path / "p" / "src" / "ift_small"
    assert sorted(p.stem for p in package.glob("*.py")) == [
        "__init__",
        "metric",
        "plugin",
        "renderer",
        "source",
        "transform",
    ]
    out = capsys.readouterr().out
    assert "created ift-small" in out and "python -m pytest" in out
    assert "ift_register_trainers" not in (package / "plugin.py").read_text()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "Bad Name",
            "use lower-case letters, digits and single hyphens, starting with a letter (did you mean 'bad-name'?)",
        ),
        ("my_plugin", "(did you mean 'my-plugin'?)"),
        ("9lives", "starting with a letter"),
        ("a--b", "single hyphens"),
        ("ift-", "give a name after 'ift-'"),
        ("sources", "'sources' is the name of a builtin ift plugin"),
        ("x" * 41, "at most 40 characters"),
    ],
)
def test_bad_names_are_refused(name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "plugin", name, "-o", str(tmp_path / "out")]) == EXIT_RECIPE
    err = capsys.readouterr().err
    assert err.startswith(f"error: invalid plugin name {name!r}: ") and message in err
    assert not (tmp_path / "out").exists()


def test_an_occupied_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "ift-demo"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert main(["init", "plugin", "demo", "-o", str(target)]) == EXIT_RECIPE
    assert f"error: {target} is a folder that is not empty; nothing was written" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert main(["init", "plugin", "demo", "-o", str(tmp_path / "file")]) == EXIT_RECIPE
    assert "is a file; nothing was written" in capsys.readouterr().err


def test_an_empty_existing_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["init", "plugin", "demo", "--kind", "metric", "-o", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "src" / "ift_demo" / "metric.py").is_file()


def test_unknown_kind_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "plugin", "demo", "--kind", "exporter", "-o", str(tmp_path / "x")]) == 2
    assert "'exporter' is not one of" in capsys.readouterr().err
