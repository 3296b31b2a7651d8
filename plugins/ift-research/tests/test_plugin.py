"""Tests of the ift-research plugin through ift's public plugin host and its contract suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ift_research import plugin
from ift_research.peft_methods import LoHaMethod, VeraMethod

import ift
from ift.recipe import validate_recipe
from ift.testing import PeftMethodContract, tiny_model_table

pytest_plugins = ["ift.testing"]


@pytest.fixture
def ift_plugins() -> dict[str, object]:
    return {"research": plugin}


class TestLoHa(PeftMethodContract):
    component = LoHaMethod
    config = {"r": 4, "alpha": 8}


class TestVera(PeftMethodContract):
    component = VeraMethod
    config = {"r": 8, "target_modules": ["q_proj", "v_proj"]}


def recipe_problems(host: Any, tmp_path: Path, peft: dict[str, Any]) -> str:
    raw = {"data": [{"source": "jsonl", "path": "d.jsonl"}], "model": tiny_model_table(peft=peft)}
    with pytest.raises(ift.RecipeError) as err:
        validate_recipe(raw, host, base_dir=tmp_path)
    return str(err.value)


def test_registered_by_name_with_the_distribution(ift_host: Any) -> None:
    assert ift_host.get("peft_method", "loha").cls is LoHaMethod
    assert ift_host.get("peft_method", "vera").cls is VeraMethod
    assert ift_host.get("peft_method", "loha").plugin == "research"


def test_loha_keys_are_validated_at_their_recipe_key(ift_host: Any, tmp_path: Path) -> None:
    assert "model.peft.alpah: unknown key (did you mean 'alpha'?)" in \
        recipe_problems(ift_host, tmp_path, {"method": "loha", "alpah": 4})
    message = recipe_problems(ift_host, tmp_path, {"method": "loha", "use_dora": True})
    assert "model.peft.use_dora: unknown key for method 'loha' (use_dora is a key of lora)" in message
    assert "model.peft.r: Input should be greater than 0" in recipe_problems(ift_host, tmp_path,
                                                                             {"method": "loha", "r": 0})
    assert "'lohaa' is not a PEFT method (did you mean 'loha'?)" in \
        recipe_problems(ift_host, tmp_path, {"method": "lohaa"})


def test_the_peft_config_carries_the_recipe_keys(ift_host: Any, tmp_path: Path) -> None:
    from ift.testing.models import load_tiny_model

    tiny = load_tiny_model(ift_host, tiny_model_table(peft={"method": "loha", "r": 2, "alpha": 6,
                                                           "target_modules": ["q_proj"]}), base_dir=tmp_path)
    config = tiny.model.peft_config["default"]
    assert (type(config).__name__, config.r, config.alpha, config.target_modules) == ("LoHaConfig", 2, 6, {"q_proj"})
    assert "LoHa r=2, alpha=6 (alpha/r = 3)" in tiny.adapter.describe()["summary"]
    assert tiny.adapter.describe()["peft_method"] == {"method": "loha", "plugin": "research",
                                                      "distribution": "ift_research (under test)", "version": "0"}


def test_vera_refuses_all_linear_on_a_classifier(ift_host: Any, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ift.builtin_plugins.peft_methods import apply_peft, method_for

    table = tiny_model_table(peft={"method": "vera"})
    section = ift_host.get("model_adapter", "causal-lm").cls.Config.model_validate(
        {k: v for k, v in table.items() if k != "adapter"}, context={"host": ift_host}).peft
    assert isinstance(method_for(section), VeraMethod)
    config = AutoConfig.for_model("llama", vocab_size=260, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, pad_token_id=256, num_labels=2)
    with pytest.raises(ift.RecipeError, match="model.peft.target_modules: vera on a classification model needs"):
        apply_peft(AutoModelForSequenceClassification.from_config(config), section, task_type="SEQ_CLS")
