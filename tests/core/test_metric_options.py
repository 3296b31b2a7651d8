"""``[eval.metric_options.NAME]``: a metric's options from the recipe, validated by the metric's own Config, used
when the metric is built, recorded in resolved.json and the manifest, and part of the run's identity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

import ift
from ift.host import PluginHost
from ift.recipe import validate_recipe
from ift.resume import run_identity
from ift.testing import sample_rows, tiny_model_table


class ConstantConfig(ift.ComponentConfig):
    value: float = Field(description="What the metric reports (required: no default).")
    scale: float = 1.0


class ConstantMetric(ift.Metric):
    """Reports its own option: shows that the recipe's options reach the metric the run builds."""

    name = "constant"
    Config = ConstantConfig
    config: ConstantConfig
    needs = "generation"

    def compute(self, outputs: ift.EvalOutputs) -> float:
        return self.config.value * self.config.scale


class ConstantPlugin:
    @ift.hookimpl
    def ift_register_metrics(self) -> list[type]:
        return [ConstantMetric]


@pytest.fixture
def ift_plugins() -> dict[str, object]:
    return {"constant": ConstantPlugin()}


def recipe(**eval_section: Any) -> dict[str, Any]:
    return {
        "data": [{"source": "jsonl", "path": "d.jsonl"}],
        "model": tiny_model_table(),
        "eval": {"metrics": ["loss", "exact_match"], **eval_section},
    }


def problems(host: PluginHost, tmp_path: Path, raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ift.RecipeError) as err:
        validate_recipe(raw, host, base_dir=tmp_path)
    return [(p.key, p.message) for p in err.value.problems]


def test_options_reach_the_config_and_the_resolved_recipe(ift_host: PluginHost, tmp_path: Path) -> None:
    raw = recipe(
        metrics=["loss", "exact_match", "f1"],
        metric_options={"exact_match": {"normalize": False}, "f1": {"average": "weighted"}},
    )
    validated = validate_recipe(raw, ift_host, base_dir=tmp_path)
    assert validated.metric_configs["exact_match"].normalize is False  # type: ignore[attr-defined]
    assert validated.metric_configs["f1"].average == "weighted"  # type: ignore[attr-defined]
    assert validated.metric_configs["loss"] == ift_host.get("metric", "loss").cls.Config()
    assert validated.resolved()["eval"]["metric_options"] == {
        "exact_match": {"normalize": False},
        "f1": {"average": "weighted"},
    }
    assert validate_recipe(recipe(), ift_host, base_dir=tmp_path).resolved()["eval"]["metric_options"] == {}


def test_unknown_keys_and_values_are_named_with_their_recipe_key(ift_host: PluginHost, tmp_path: Path) -> None:
    raw = recipe(
        metrics=["loss", "exact_match", "f1", "accuracy"],
        metric_options={
            "exact_match": {"normalise": False},
            "f1": {"average": "median"},
            "accuracy": {"average": "micro"},
        },
    )
    found = dict(problems(ift_host, tmp_path, raw))
    assert found["eval.metric_options.exact_match.normalise"] == "unknown key (did you mean 'normalize'?)"
    assert found["eval.metric_options.f1.average"].startswith("Input should be 'macro', 'micro' or 'weighted'")
    assert found["eval.metric_options.accuracy.average"] == "unknown key"  # accuracy has nothing to average


def test_options_for_an_unknown_or_unused_metric_are_problems(ift_host: PluginHost, tmp_path: Path) -> None:
    raw = recipe(metric_options={"exact_mtch": {"normalize": False}, "rouge_l": {}})
    found = dict(problems(ift_host, tmp_path, raw))
    assert found["eval.metric_options.exact_mtch"].startswith(
        "unknown metric 'exact_mtch' (did you mean 'exact_match'?); available: "
    )
    assert found["eval.metric_options.rouge_l"] == (
        "'rouge_l' is not in eval.metrics, so these options would not "
        "be used; add it to eval.metrics or remove the table"
    )
    raw = recipe(metric_options={"exact_matc": {}})  # a near-miss of a metric that is in eval.metrics
    assert "did you mean 'exact_match'?" in dict(problems(ift_host, tmp_path, raw))["eval.metric_options.exact_matc"]
    raw = recipe(metric_options={"exact_match": 3})
    assert "eval.metric_options.exact_match" in dict(problems(ift_host, tmp_path, raw))


def test_a_plugin_metrics_required_option_is_asked_for(ift_host: PluginHost, tmp_path: Path) -> None:
    raw = recipe(metrics=["constant"])
    assert problems(ift_host, tmp_path, raw) == [("eval.metric_options.constant.value", "required key is missing")]
    validated = validate_recipe(
        recipe(metrics=["constant"], metric_options={"constant": {"value": 0.5}}), ift_host, base_dir=tmp_path
    )
    assert validated.resolved()["eval"]["metric_options"] == {"constant": {"value": 0.5, "scale": 1.0}}


def test_options_are_part_of_the_runs_identity(ift_host: PluginHost, tmp_path: Path) -> None:
    def identity(value: float) -> dict[str, Any]:
        validated = validate_recipe(
            recipe(metrics=["constant"], metric_options={"constant": {"value": value}}), ift_host, base_dir=tmp_path
        )
        return run_identity(validated.resolved(), data=[], tokenizer="t", template="x", world_size=1)["recipe"]

    assert identity(0.5)["eval.metric_options.constant.value"] == 0.5
    assert identity(0.5) != identity(0.25)  # a resume must not mix evaluations computed two ways


@pytest.mark.slow
def test_a_run_builds_the_metric_with_its_options(ift_run: Any) -> None:
    raw = {
        "data": [{"source": "jsonl", "path": "data.jsonl"}],
        "model": tiny_model_table(),
        "trainer": {"max_steps": 1, "batch_size": 2, "max_length": 64},
        "eval": {
            "fraction": 0.25,
            "metrics": ["constant", "exact_match"],
            "baseline": False,
            "max_new_tokens": 2,
            "metric_options": {"constant": {"value": 0.25, "scale": 2.0}, "exact_match": {"normalize": False}},
        },
    }
    run_dir = ift_run(raw, files={"data.jsonl": sample_rows(8)})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["final"]["overall"]["constant"] == 0.5
    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["eval"]["metric_options"]["constant"] == {"value": 0.25, "scale": 2.0}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["metrics"]["constant"] == {
        "options": {"value": 0.25, "scale": 2.0},
        "plugin": "constant",
        "distribution": manifest["metrics"]["constant"]["distribution"],
        "version": "0",
    }
    assert manifest["metrics"]["exact_match"]["options"] == {"normalize": False}
    assert manifest["metrics"]["exact_match"]["distribution"] == "ift"
