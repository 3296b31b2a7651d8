"""Tests of the ift-arith plugin through ift's public plugin host."""

from __future__ import annotations

from pathlib import Path

import pytest

import ift
from ift.host import PluginHost
from ift.recipe import validate_recipe
from ift_arith import plugin


@pytest.fixture
def host():
    host = PluginHost(entry_points=False)
    host.register(plugin, "arith", distribution="ift-arith", version="test")
    yield host
    host.unregister("arith")


def test_registers_every_component(host):
    assert host.get("source", "arithmetic").cls is plugin.ArithmeticSource
    assert host.get("renderer", "qa").distribution == "ift-arith"
    assert host.get("metric", "numeric_match").cls is plugin.NumericMatch
    assert host.get("trainer", "sft-smoothed").cls is plugin.LabelSmoothingTrainer


def test_source_is_seeded_and_correct():
    source = plugin.ArithmeticSource(
        plugin.ArithmeticConfig(n=50, seed=3, operations=["*"]), source_name="a", base_dir=Path(".")
    )
    records = list(source.records())
    again = list(source.records())
    assert [r.to_dict() for r in records] == [r.to_dict() for r in again]
    for record in records:
        a, _, b = record.messages[0].content.removeprefix("What is ").removesuffix("?").split()
        assert int(record.answer) == int(a) * int(b)


def test_qa_template_marks_answer_and_eos():
    renderer = plugin.QARenderer(plugin.QARenderer.Config(), base_dir=Path("."))

    class Tok:
        eos_token, bos_token = "</s>", None

    renderer.bind(Tok())
    record = ift.InstructionRecord("1", "a", [ift.Message("user", "What is 1 + 2?"), ift.Message("assistant", "3")])
    assert renderer.render(record) == [
        ift.Segment("Q: What is 1 + 2?\nA: ", False),
        ift.Segment("3</s>", True),
        ift.Segment("\n", False),
    ]


def test_numeric_match_tolerance():
    metric = plugin.NumericMatch(plugin.NumericMatchConfig(tolerance=0.5))
    outputs = ift.EvalOutputs(predictions=["3", "4.4", "x", "10"], references=["3", "4", "1", "12"], records=[])
    assert metric.compute(outputs) == 0.5


def test_recipe_validates_plugin_keys(host, tmp_path):
    raw = {
        "data": [{"source": "arithmetic", "n": 10, "max_operant": 3}],
        "template": {"name": "qa"},
        "model": {"adapter": "causal-lm", "tokenizer": "byte-level", "from_config": {"model_type": "llama"}},
        "trainer": {"name": "sft-smoothed", "label_smoothing": 2.0},
    }
    with pytest.raises(ift.RecipeError) as err:
        validate_recipe(raw, host, base_dir=tmp_path)
    text = str(err.value)
    assert "data[0].max_operant: unknown key (did you mean 'max_operand'?)" in text
    assert "trainer.label_smoothing" in text
