"""An exception raised inside a plugin component's own code names the plugin, its distribution and version, the
component and its recipe table, with the original chained, as lifecycle-hook failures do. Errors a component
raises on purpose (the IftError family) keep their own message and exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

import ift
from ift.data import DataReport, apply_transforms, read_sources
from ift.pipeline import make_renderer


class Explodes(ift.Transform):
    name = "explodes"

    def apply(self, records, tally):
        raise ValueError("boom in apply")


class Picky(ift.RecordFilter):
    name = "picky"

    def reason(self, record):
        return {}["missing"]  # KeyError, from a method the base class's apply calls


class Refuses(ift.Transform):
    name = "refuses"

    def apply(self, records, tally):
        raise ift.DataError("this data is not for me", file="x.jsonl", line=3)


class Flaky(ift.InstructionSource):
    name = "flaky"

    def records(self):
        yield ift.InstructionRecord("a", self.source_name, [ift.Message("user", "q"), ift.Message("assistant", "a")])
        raise ConnectionError("the database went away")


class Garbled(ift.Renderer):
    name = "garbled"

    def render(self, record):
        raise TypeError("cannot render this")

    def template_hash(self):
        return "sha256:0"


class Provides:
    @ift.hookimpl
    def ift_register_transforms(self):
        return [Explodes, Picky, Refuses]

    @ift.hookimpl
    def ift_register_sources(self):
        return [Flaky]

    @ift.hookimpl
    def ift_register_renderers(self):
        return [Garbled]


@pytest.fixture
def shaky(host):
    host.register(Provides(), "shaky", distribution="ift-shaky", version="2.1.0")
    return host


def records():
    return [ift.InstructionRecord("r1", "d", [ift.Message("user", "q"), ift.Message("assistant", "a")])]


@pytest.mark.parametrize(
    ("table", "method", "cause"), [("explodes", "apply", ValueError), ("picky", "reason", KeyError)]
)
def test_a_transform_failure_names_plugin_version_component_and_table(shaky, make_recipe, table, method, cause):
    recipe = make_recipe(transforms=[{"name": "dedup"}, {"name": table}])
    with pytest.raises(ift.PluginError) as info:
        apply_transforms(recipe, shaky, records(), DataReport())
    message = str(info.value)
    assert message.startswith(
        f"plugin 'shaky' (ift-shaky 2.1.0): transform {table!r} (recipe table transforms[1]) "
        f"{method}() raised {cause.__name__}: "
    )
    assert isinstance(info.value.__cause__, cause) and info.value.exit_code == ift.PluginError.exit_code


def test_a_source_failing_while_yielding_is_named(shaky, make_recipe):
    recipe = make_recipe(data=[{"source": "flaky", "name": "crm"}])
    with pytest.raises(
        ift.PluginError,
        match=r"^plugin 'shaky' \(ift-shaky 2.1.0\): source 'flaky' \(recipe table "
        r"data\[0\]\) records\(\) raised ConnectionError: the database went",
    ):
        read_sources(recipe, shaky, DataReport())


def test_a_renderer_failure_is_named(shaky, make_recipe, tokenizer):
    renderer = make_renderer(make_recipe(template={"name": "garbled"}), shaky)
    with pytest.raises(
        ift.PluginError,
        match=r"renderer 'garbled' \(recipe table template\) render\(\) raised "
        r"TypeError: cannot render this",
    ) as info:
        renderer.prompt(records()[0])  # the base class's prompt calls the plugin's render: named once, innermost
    assert str(info.value).count("raised") == 1


def test_errors_raised_on_purpose_keep_their_message_and_code(shaky, make_recipe):
    recipe = make_recipe(transforms=[{"name": "refuses"}])
    with pytest.raises(ift.DataError) as info:
        apply_transforms(recipe, shaky, records(), DataReport())
    assert str(info.value) == "x.jsonl:3: this data is not for me" and type(info.value) is ift.DataError


def test_components_built_outside_a_recipe_raise_as_written(tmp_path: Path):
    with pytest.raises(ValueError, match="boom in apply"):
        Explodes(Explodes.Config()).apply([], ift.Tally())


# --- through a run: a metric's compute and an adapter's methods --------------------------------------------

RUN_PLUGIN = """
import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter


class Fussy(ift.Metric):
    name = "fussy"
    needs = "loss"

    def compute(self, outputs):
        raise ZeroDivisionError("no examples to average")


class Brittle(CausalLMAdapter):
    name = "brittle"

    def prepare_data(self, records, *, max_length):
        raise RuntimeError("cannot size the inputs")


@ift.hookimpl
def ift_register_metrics():
    return [Fussy]


@ift.hookimpl
def ift_register_model_adapters():
    return [Brittle]
"""
ROWS = [{"prompt": f"Spell {w}", "completion": " ".join(w)} for w in ["cat", "dog", "sun", "map", "red", "toy"]]


def failing_run(ift_run, table: dict, **changes) -> ift.testing.RunFailed:
    recipe = {
        "plugins": {"local": ["brittle_plugin.py"]},
        "data": [{"source": "jsonl", "path": "d.jsonl"}],
        "model": table,
        "trainer": {"max_steps": 1, "batch_size": 2, "max_length": 64},
        "eval": {"fraction": 0.34, "baseline": False, "metrics": ["loss"]},
        **changes,
    }
    with pytest.raises(ift.testing.RunFailed) as info:
        ift_run(recipe, files={"brittle_plugin.py": RUN_PLUGIN, "d.jsonl": ROWS})
    return info.value


def test_a_metric_failing_in_compute_is_named_with_its_recipe_table(ift_run, ift_tiny_model_table):
    failed = failing_run(
        ift_run, ift_tiny_model_table, eval={"fraction": 0.34, "baseline": False, "metrics": ["loss", "fussy"]}
    )
    assert failed.exit_code == ift.PluginError.exit_code
    assert "plugin 'local:brittle_plugin' (" in str(failed)  # distribution: the file, version: local
    assert (
        "brittle_plugin.py local): metric 'fussy' (recipe table eval.metrics[1]) compute() raised "
        "ZeroDivisionError: no examples to average" in str(failed)
    )


def test_an_adapter_failing_in_its_own_method_is_named(ift_run, ift_tiny_model_table):
    failed = failing_run(ift_run, {**ift_tiny_model_table, "adapter": "brittle"})
    assert failed.exit_code == ift.PluginError.exit_code
    assert (
        "brittle_plugin.py local): model adapter 'brittle' (recipe table model) prepare_data() "
        "raised RuntimeError: cannot size the inputs" in str(failed)
    )
