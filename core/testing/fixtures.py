"""The fixtures of the ``ift.testing`` pytest plugin (see :mod:`ift.testing`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ift.testing.models import TinyModel, load_tiny_model, tiny_model_table
from ift.testing.runner import run_recipe
from ift.testing.samples import FileContent

_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture
def ift_plugins() -> Mapping[str, object] | Sequence[object]:
    """The plugins under test, registered on every :func:`ift_host`. Override it in your ``conftest.py``::

        @pytest.fixture
        def ift_plugins():
            from my_plugin import plugin
            return {"my-plugin": plugin}        # or a list of modules: [plugin]

    A list names each plugin after its module. Default: none (the builtins only)."""
    return {}


@pytest.fixture
def ift_entry_points() -> bool:
    """Whether :func:`ift_host` also loads installed plugins (the ``ift`` entry-point group). Default False,
    so a test sees the same plugins whatever else is installed; override to return True to test an installed
    distribution."""
    return False


@pytest.fixture
def ift_host(ift_plugins: Mapping[str, object] | Sequence[object], ift_entry_points: bool) -> Iterator[Any]:
    """A fresh :class:`ift.host.PluginHost`: the builtin plugins, the plugins of :func:`ift_plugins` and,
    when :func:`ift_entry_points` says so, installed ones. Whatever a test registers is unregistered after it."""
    from ift.host import PluginHost

    host = PluginHost(entry_points=ift_entry_points)
    named = ift_plugins.items() if isinstance(ift_plugins, Mapping) else [(_plugin_name(p), p) for p in ift_plugins]
    for name, plugin in named:
        if host.pm.is_registered(plugin):
            continue  # already loaded through its entry point
        host.register(plugin, name, distribution=_distribution(plugin))
    loaded = set(host.plugins)
    yield host
    for name in list(host.plugins):
        if name not in loaded:
            host.unregister(name)


def _plugin_name(plugin: object) -> str:
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    return str(name)


def _distribution(plugin: object) -> str:
    module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
    return f"{module.split('.')[0]} (under test)"


@pytest.fixture
def ift_tiny_model_table() -> dict[str, Any]:
    """A recipe ``[model]`` table for a tiny Llama built from a config with the byte-level tokenizer (no
    download). A fresh copy each time; see :func:`ift.testing.tiny_model_table` for variants."""
    return tiny_model_table()


@pytest.fixture
def ift_tiny_model(ift_host: Any, ift_tiny_model_table: dict[str, Any], tmp_path: Path) -> TinyModel:
    """The tiny model loaded: ``.adapter`` (causal-lm), ``.tokenizer`` (byte-level), ``.model`` (seeded, so
    identical in every test), ``.table``."""
    return load_tiny_model(ift_host, ift_tiny_model_table, base_dir=tmp_path)


@pytest.fixture
def ift_run(
    ift_host: Any, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Path]:
    """Run a recipe in-process through ``ift run`` and return the run directory::

        run_dir = ift_run(recipe, files={"data.jsonl": rows}, overrides=["trainer.max_steps=2"])

    ``recipe`` is TOML text or a dict (``{"data": [{...}], "model": ift_tiny_model_table, ...}``); ``files``
    are written beside it (text, bytes, or a list of dicts written as JSON Lines). A failed run raises
    :class:`ift.testing.RunFailed` with the run's error message; pass ``check=False`` to get the run directory
    of a failed run instead. The host is :func:`ift_host`, so the plugins under test are available. Runs are
    offline, and the prepared-data cache lives in a temporary folder unless ``IFT_CACHE_DIR`` is set."""
    for key, value in _OFFLINE.items():
        monkeypatch.setenv(key, os.environ.get(key, value))
    if not os.environ.get("IFT_CACHE_DIR"):
        monkeypatch.setenv("IFT_CACHE_DIR", str(tmp_path_factory.mktemp("ift-cache")))

    def run(
        recipe: str | Mapping[str, Any],
        *,
        files: Mapping[str, FileContent] | None = None,
        overrides: Sequence[str] = (),
        check: bool = True,
        output_dir: Path | None = None,
    ) -> Path:
        folder = tmp_path_factory.mktemp("ift-run")
        return run_recipe(
            recipe, host=ift_host, folder=folder, files=files, overrides=overrides, output_dir=output_dir, check=check
        )

    return run
