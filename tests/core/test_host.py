"""The plugin host: builtins, entry points (one broken plugin never hides the others), hook-name checks,
registration contracts, duplicate names, and the typed lifecycle facade."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pluggy
import pytest

import ift
from ift.builtin_plugins.sources import JsonlSource
from ift.errors import PluginError
from ift.host import PluginHost, did_you_mean

BUILTIN_NAMES = {
    "source": ["csv", "hf", "json", "jsonl", "parquet", "retrieved", "self-instruct", "templated"],
    "transform": ["decontaminate", "dedup", "drop-invalid", "length-filter", "mask-pii", "near-dedup", "tag"],
    "renderer": ["alpaca", "chat", "chatml", "jinja", "plain"],
    "model_adapter": ["causal-lm", "classifier", "seq2seq"],
    "trainer": ["continual", "distill", "dpo", "kto", "orpo", "sft", "sft-adversarial"],
    "objective": ["continual", "distill", "dpo", "kto", "orpo", "sft", "sft-adversarial"],
    "metric": ["accuracy", "exact_match", "f1", "loss", "perplexity", "precision", "recall", "rouge_l"],
    "peft_method": ["adalora", "ia3", "lora", "prefix-tuning", "prompt-tuning"],
}


class _Source(ift.InstructionSource):
    name = "memory"

    def records(self) -> list[ift.InstructionRecord]:
        return []


class SourcePlugin:
    def __init__(self, *classes: type) -> None:
        self.classes = list(classes)

    @ift.hookimpl
    def ift_register_sources(self) -> list[type]:
        return self.classes


# --- builtins ----------------------------------------------------------------------------------


def test_builtins_register_every_component_under_its_name(host: PluginHost) -> None:
    for kind, names in BUILTIN_NAMES.items():
        assert host.names(kind) == names
    assert host.get("source", "jsonl").cls is JsonlSource
    assert host.get("source", "jsonl").plugin == "sources"
    assert host.get("source", "jsonl").distribution == "ift"


def test_builtin_plugins_are_described_with_origin_and_registered_names(host: PluginHost) -> None:
    described = {row["name"]: row for row in host.describe()}
    assert set(described) == {
        "sources",
        "transforms",
        "renderers",
        "causal_lm",
        "seq2seq",
        "classifier",
        "peft_methods",
        "sft",
        "trainers",
        "preference",
        "metrics",
        "cleaning",
        "builders",
        "data_cli",
        "reporting",
        "quality",
        "tensorboard",
        "serve",
        "inference",
        "scaffold",
    }
    assert described["transforms"]["origin"] == "builtin"
    assert described["transforms"]["distribution"] == "ift"
    assert described["transforms"]["registered"] == {"transform": ["drop-invalid", "dedup"]}


def test_a_registered_plugin_adds_its_component(host: PluginHost) -> None:
    host.register(SourcePlugin(_Source), "mine", distribution="ift-mine", version="1.2")
    registered = host.get("source", "memory")
    assert (registered.cls, registered.plugin, registered.distribution, registered.version) == (
        _Source,
        "mine",
        "ift-mine",
        "1.2",
    )
    host.unregister("mine")
    assert "memory" not in host.names("source")


def test_describe_lists_each_name_once_after_registry_is_rebuilt(host: PluginHost) -> None:
    _ = host.registry
    host.register(SourcePlugin(_Source), "mine")
    described = {row["name"]: row for row in host.describe()}
    assert described["sources"]["registered"] == {"source": ["jsonl", "json", "csv", "parquet", "hf"]}
    assert described["mine"]["registered"] == {"source": ["memory"]}


# --- errors naming plugins ---------------------------------------------------------------------


def test_duplicate_component_name_names_both_owners(host: PluginHost) -> None:
    class OtherJsonl(_Source):
        name = "jsonl"

    host.register(SourcePlugin(OtherJsonl), "dup", distribution="ift-dup", version="0.3")
    with pytest.raises(PluginError) as info:
        _ = host.registry
    message = str(info.value)
    assert "source name 'jsonl' is registered twice" in message
    assert "by plugin 'sources' (ift " in message
    assert "by plugin 'dup' (ift-dup 0.3)" in message
    assert info.value.plugin == "dup"
    assert info.value.distribution == "ift-dup"


def test_duplicate_plugin_name_is_an_error(host: PluginHost) -> None:
    with pytest.raises(PluginError, match="a plugin named 'sources' is already loaded from ift"):
        host.register(SourcePlugin(), "sources")


def test_misspelled_hook_is_reported_with_did_you_mean(host: PluginHost) -> None:
    class Misspelled:
        @ift.hookimpl
        def ift_register_sorces(self) -> list[type]:
            return []

    with pytest.raises(PluginError) as info:
        host.register(Misspelled(), "typo", distribution="ift-typo")
    assert str(info.value) == (
        "plugin 'typo' (from ift-typo): unknown hook 'ift_register_sorces' (did you mean 'ift_register_sources'?)"
    )
    assert "typo" not in host.plugins
    assert "typo" not in [name for name, _ in host.pm.list_name_plugin()]


def test_hookimpl_with_unknown_argument_is_a_plugin_error(host: PluginHost) -> None:
    class BadArguments:
        @ift.hookimpl
        def ift_register_commands(self, clii: Any) -> None:
            pass

    with pytest.raises(PluginError, match="bad"):
        host.register(BadArguments(), "bad")


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        (dict, "returned <class 'dict'>, which is not a subclass of ift.InstructionSource"),
        ("jsonl", "returned 'jsonl', which is not a subclass of ift.InstructionSource"),
    ],
)
def test_registration_hook_returning_a_non_subclass_is_rejected(host: PluginHost, returned: Any, expected: str) -> None:
    host.register(SourcePlugin(returned), "wrong", distribution="ift-wrong")
    with pytest.raises(PluginError) as info:
        _ = host.registry
    assert str(info.value) == f"plugin 'wrong' (from ift-wrong): ift_register_sources: {expected}"


def test_component_without_name_or_with_a_plain_config_is_rejected(host: PluginHost) -> None:
    class Nameless(ift.InstructionSource):
        def records(self) -> list[ift.InstructionRecord]:
            return []

    host.register(SourcePlugin(Nameless), "nameless")
    with pytest.raises(PluginError, match="Nameless has no 'name'"):
        _ = host.registry
    host.unregister("nameless")

    class BadConfig(_Source):
        name = "bad-config"
        Config = dict  # type: ignore[assignment]

    host.register(SourcePlugin(BadConfig), "bad-config")
    with pytest.raises(PluginError, match=r"BadConfig.Config must subclass ift.ComponentConfig"):
        _ = host.registry


def test_trainer_config_must_subclass_trainer_config(host: PluginHost) -> None:
    class Loose(ift.Trainer):
        name = "loose"
        Config = ift.ComponentConfig

        def train(self, ctx: Any) -> Any:
            raise NotImplementedError

    class Plugin:
        @ift.hookimpl
        def ift_register_trainers(self) -> list[type]:
            return [Loose]

    host.register(Plugin(), "loose")
    with pytest.raises(PluginError, match=r"Loose.Config must subclass ift.TrainerConfig"):
        _ = host.registry


def test_registration_hook_that_raises_names_plugin_and_hook(host: PluginHost) -> None:
    class Raises:
        @ift.hookimpl
        def ift_register_metrics(self) -> list[type]:
            raise RuntimeError("boom")

    host.register(Raises(), "raiser", distribution="ift-raiser")
    with pytest.raises(PluginError) as info:
        _ = host.registry
    assert str(info.value) == "plugin 'raiser' (from ift-raiser): ift_register_metrics() raised RuntimeError: boom"


def test_unknown_name_message_has_did_you_mean_and_choices(host: PluginHost) -> None:
    assert (
        host.unknown_message("source", "jsnl")
        == f"unknown source 'jsnl' (did you mean 'jsonl'?); available: {', '.join(host.names('source'))}"
    )
    assert (
        host.unknown_message("renderer", "zzz")
        == "unknown template renderer 'zzz'; available: alpaca, chat, chatml, jinja, plain"
    )
    with pytest.raises(PluginError, match=r"unknown metric 'rouge' \(did you mean 'rouge_l'\?\)"):
        host.get("metric", "rouge")


def test_did_you_mean() -> None:
    assert did_you_mean("learnig_rate", ["learning_rate", "epochs"]) == " (did you mean 'learning_rate'?)"
    assert did_you_mean("xyz", ["learning_rate", "epochs"]) == ""


# --- entry points ------------------------------------------------------------------------------


class FakeEntryPoint:
    def __init__(self, name: str, load: Any, dist: str = "ift-fake", version: str = "9.9") -> None:
        self.name = name
        self._load = load
        self.dist = SimpleNamespace(name=dist, version=version)
        self.value = f"{name.replace('-', '_')}_module"

    def load(self) -> Any:
        return self._load()


def _broken() -> Any:
    raise ImportError("No module named 'missing_dependency'")


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: list[FakeEntryPoint]) -> None:
    def entry_points(*, group: str) -> list[FakeEntryPoint]:
        assert group == "ift"
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.delenv("IFT_DISABLE_ENTRY_POINTS", raising=False)
    monkeypatch.delenv("IFT_PLUGINS", raising=False)
    monkeypatch.delenv("IFT_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("IFT_DISABLE_PLUGINS", raising=False)


def test_broken_entry_point_is_recorded_and_the_others_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(
        monkeypatch,
        [
            FakeEntryPoint("zz-good", lambda: SourcePlugin(_Source), dist="ift-good", version="1.0"),
            FakeEntryPoint("aa-broken", _broken, dist="ift-broken", version="0.1"),
        ],
    )
    with pytest.warns(
        UserWarning,
        match=r"plugin 'aa-broken' \(ift-broken 0.1, entry point aa_broken_module\) "
        r"failed to load",
    ):
        host = PluginHost()
    assert [(f.name, f.distribution, f.version, f.error) for f in host.failures] == [
        ("aa-broken", "ift-broken", "0.1", "ImportError: No module named 'missing_dependency'")
    ]
    assert host.plugins["zz-good"].origin == "entry-point"
    assert host.get("source", "memory").distribution == "ift-good"
    message = host.unknown_message("source", "private-db")
    assert message.endswith(
        "; plugin 'aa-broken' (ift-broken 0.1, entry point aa_broken_module) failed to load "
        "and may provide it: "
        "ImportError: No module named 'missing_dependency'"
    )


def test_entry_point_with_misspelled_hook_is_a_failure_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    class Misspelled:
        @ift.hookimpl
        def ift_register_sorces(self) -> list[type]:
            return []

    _fake_entry_points(monkeypatch, [FakeEntryPoint("typo", Misspelled)])
    with pytest.warns(UserWarning):
        host = PluginHost()
    assert len(host.failures) == 1
    assert "did you mean 'ift_register_sources'" in host.failures[0].error
    assert "typo" not in host.plugins


def test_plugin_allow_list_skips_other_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    class Other(_Source):
        name = "other"

    _fake_entry_points(
        monkeypatch,
        [FakeEntryPoint("one", lambda: SourcePlugin(_Source)), FakeEntryPoint("two", lambda: SourcePlugin(Other))],
    )
    monkeypatch.setenv("IFT_LOAD_PLUGINS", "two")
    host = PluginHost()
    assert "one" not in host.plugins and "two" in host.plugins
    assert "other" in host.names("source") and "memory" not in host.names("source")
    monkeypatch.delenv("IFT_LOAD_PLUGINS")
    monkeypatch.setenv("IFT_DISABLE_PLUGINS", "two")
    host = PluginHost()
    assert "one" in host.plugins and "two" not in host.plugins


def test_entry_points_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, [FakeEntryPoint("aa-broken", _broken)])
    monkeypatch.setenv("IFT_DISABLE_ENTRY_POINTS", "1")
    assert PluginHost().failures == []
    assert PluginHost(entry_points=False).failures == []


# --- local plugin files ------------------------------------------------------------------------


def test_local_plugin_file_is_loaded(host: PluginHost, tmp_path: Path) -> None:
    plugin = tmp_path / "extra_metric.py"
    plugin.write_text(
        "import ift\n"
        "class Length(ift.Metric):\n"
        "    name = 'length'\n"
        "    def compute(self, outputs):\n"
        "        return float(len(outputs.predictions))\n"
        "@ift.hookimpl\n"
        "def ift_register_metrics():\n"
        "    return [Length]\n"
    )
    host.load_local(plugin)
    assert host.get("metric", "length").plugin == "local:extra_metric"
    assert host.plugins["local:extra_metric"].origin == "local"


def test_local_plugin_errors(host: PluginHost, tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="local plugin file not found"):
        host.load_local(tmp_path / "absent.py")
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('bad plugin')\n")
    with pytest.raises(PluginError) as info:
        host.load_local(broken)
    assert str(info.value) == f"plugin 'local:broken': failed to import {broken}: ValueError: bad plugin"


# --- lifecycle facade --------------------------------------------------------------------------


def test_lifecycle_hooks_reach_every_observer(host: PluginHost) -> None:
    calls: list[tuple[str, Any]] = []

    class Observer:
        @ift.hookimpl
        def ift_run_start(self, run_dir: str, resolved: dict[str, Any]) -> None:
            calls.append(("start", run_dir, resolved))

        @ift.hookimpl
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> None:
            calls.append(("step", event["step"]))

        @ift.hookimpl
        def ift_evaluate_end(self, run_dir: str, stage: str, metrics: dict[str, Any]) -> None:
            calls.append(("eval", stage, metrics))

        @ift.hookimpl
        def ift_run_end(self, run_dir: str, status: str, metrics: dict[str, Any]) -> None:
            calls.append(("end", status))

        @ift.hookimpl
        def ift_prepare_jinja_env(self, env: Any) -> None:
            env["touched"] = True

        @ift.hookimpl
        def ift_register_commands(self, cli: Any) -> None:
            cli.append("cmd")

    host.register(Observer(), "observer")
    host.run_start("runs/x", {"a": 1})
    host.step_end("runs/x", {"step": 3})
    host.evaluate_end("runs/x", "final", {"loss": 0.5})
    host.run_end("runs/x", "completed", {})
    env: dict[str, Any] = {}
    host.prepare_jinja_env(env)

    class Commands(list):  # stands in for the click group
        def add_command(self, command: Any) -> None:
            self.append(command.name)

    commands = Commands()
    host.register_commands(commands)
    assert calls == [("start", "runs/x", {"a": 1}), ("step", 3), ("eval", "final", {"loss": 0.5}), ("end", "completed")]
    assert env == {"touched": True}
    assert sorted(commands) == [
        "chat",
        "cmd",
        "compare",
        "data",
        "export",
        "generate",
        "init",
        "report",
        "runs",
        "serve",
    ]  # the builtin commands


def test_pluggy_project_name_is_ift(host: PluginHost) -> None:
    assert isinstance(host.pm, pluggy.PluginManager)
    assert host.pm.project_name == "ift"


def test_an_observer_that_raises_is_named_with_hook_and_step(host: PluginHost) -> None:
    class Tracker:
        @ift.hookimpl
        def ift_step_end(self, run_dir: str, event: dict[str, Any]) -> None:
            raise ConnectionError("tracker offline")

    host.register(Tracker(), "tracker", distribution="ift-tracker", version="2.0")
    with pytest.raises(PluginError) as err:
        host.step_end("run", {"step": 40, "loss": 1.0})
    assert str(err.value) == (
        "plugin 'tracker' (ift-tracker 2.0): ift_step_end (step 40) raised ConnectionError: tracker offline"
    )
    assert isinstance(err.value.__cause__, ConnectionError)
