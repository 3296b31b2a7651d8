"""Tests of the ift-research plugin through ift's public plugin host and its contract suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ift_research import plugin
from ift_research.objectives import LabelSmoothing
from ift_research.peft_methods import LoHaMethod, VeraMethod

import ift
from ift.recipe import validate_recipe
from ift.testing import ObjectiveContract, PeftMethodContract, tiny_model_table

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
    assert "model.peft.alpah: unknown key (did you mean 'alpha'?)" in recipe_problems(
        ift_host, tmp_path, {"method": "loha", "alpah": 4}
    )
    message = recipe_problems(ift_host, tmp_path, {"method": "loha", "use_dora": True})
    assert "model.peft.use_dora: unknown key for method 'loha' (use_dora is a key of lora)" in message
    assert "model.peft.r: Input should be greater than 0" in recipe_problems(
        ift_host, tmp_path, {"method": "loha", "r": 0}
    )
    assert "'lohaa' is not a PEFT method (did you mean 'loha'?)" in recipe_problems(
        ift_host, tmp_path, {"method": "lohaa"}
    )


def test_the_peft_config_carries_the_recipe_keys(ift_host: Any, tmp_path: Path) -> None:
    from ift.testing.models import load_tiny_model

    tiny = load_tiny_model(
        ift_host,
        tiny_model_table(peft={"method": "loha", "r": 2, "alpha": 6, "target_modules": ["q_proj"]}),
        base_dir=tmp_path,
    )
    config = tiny.model.peft_config["default"]
    assert (type(config).__name__, config.r, config.alpha, config.target_modules) == ("LoHaConfig", 2, 6, {"q_proj"})
    assert "LoHa r=2, alpha=6 (alpha/r = 3)" in tiny.adapter.describe()["summary"]
    assert tiny.adapter.describe()["peft_method"] == {
        "method": "loha",
        "plugin": "research",
        "distribution": "ift_research (under test)",
        "version": "0",
    }


def test_vera_refuses_all_linear_on_a_classifier(ift_host: Any, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ift.builtin_plugins.peft_methods import apply_peft, method_for

    table = tiny_model_table(peft={"method": "vera"})
    section = (
        ift_host.get("model_adapter", "causal-lm")
        .cls.Config.model_validate({k: v for k, v in table.items() if k != "adapter"}, context={"host": ift_host})
        .peft
    )
    assert isinstance(method_for(section), VeraMethod)
    config = AutoConfig.for_model(
        "llama",
        vocab_size=260,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=256,
        num_labels=2,
    )
    with pytest.raises(ift.RecipeError, match="model.peft.target_modules: vera on a classification model needs"):
        apply_peft(AutoModelForSequenceClassification.from_config(config), section, task_type="SEQ_CLS")


# --- the label-smoothing objective ---------------------------------------------------------------------------


class TestLabelSmoothing(ObjectiveContract):
    component = LabelSmoothing
    config = {
        "max_steps": 3,
        "batch_size": 2,
        "learning_rate": 1e-2,
        "log_every": 1,
        "max_length": 128,
        "smoothing": 0.2,
    }


def test_label_smoothing_against_a_hand_computed_value(ift_tiny_model: Any) -> None:
    import torch

    tiny = ift_tiny_model
    examples = [
        tiny.adapter.encode(
            tiny.tokenizer, [ift.Segment("q: ab\n", False), ift.Segment("AB", True)], source="s", record_id=f"r{i}"
        )
        for i in range(2)
    ]
    batch = tiny.adapter.collate(tiny.tokenizer, examples)
    objective = LabelSmoothing(LabelSmoothing.Config(smoothing=0.25))
    objective.ctx = ift.TrainContext(
        model=tiny.model,
        tokenizer=tiny.tokenizer,
        adapter=tiny.adapter,
        train_examples=examples,
        eval_examples=[],
        seed=0,
        run_dir=Path("."),
        log_step=lambda e: None,
        evaluate=lambda m, s: {},
        progress=None,
    )  # type: ignore[arg-type]
    with torch.no_grad():
        terms = objective.loss(tiny.model, batch)
        logits = tiny.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    expected = 0.0
    for row in range(2):
        for t in range(batch["labels"].size(1) - 1):
            target = int(batch["labels"][row, t + 1])
            if target == -100:
                continue
            logp = torch.log_softmax(logits[row, t], dim=-1)
            expected += 0.75 * -float(logp[target]) + 0.25 * -float(logp.mean())
    assert float(terms.loss) == pytest.approx(expected, rel=1e-5)
    plain, _ = tiny.adapter.loss_sum(tiny.model, batch)
    assert float(terms.figures["nll"]) == pytest.approx(float(plain), rel=1e-5)
