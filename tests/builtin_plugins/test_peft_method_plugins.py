"""A PEFT method from a plugin reaches every hook of the kind through the model adapter: its penalty is the
training penalty, its per-update work runs, ``packing = False`` is honoured, and a failure in its own code names
the plugin, the method and the recipe table."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ift
from ift.builtin_plugins import peft_methods
from ift.testing import tiny_model_table
from ift.testing.models import load_tiny_model


class TinyLoraConfig(ift.PeftMethodConfig):
    r: int = 2
    penalty: float = 0.0
    fail_after_wrap: bool = False


class TinyLora(ift.PeftMethod):
    """LoRA on q_proj with a constant penalty, counting its updates (what AdaLoRA-like methods need)."""

    name = "tiny-lora"
    Config = TinyLoraConfig
    config: TinyLoraConfig
    packing = False
    updates: list[tuple[int, int]] = []

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=self.config.r, target_modules=["q_proj"], task_type=task_type)

    def after_wrap(self, model: Any, *, task_type: str, tokenizer: Any = None) -> Any:
        if self.config.fail_after_wrap:
            raise RuntimeError("boom")
        return model

    def training_penalty(self, model: Any) -> Any:
        return torch.tensor(self.config.penalty) if self.config.penalty else None

    def on_optimizer_step(self, model: Any, step: int, total_steps: int) -> None:
        TinyLora.updates.append((step, total_steps))


class Plugin:
    @ift.hookimpl
    def ift_register_peft_methods(self) -> list[type]:
        return [TinyLora]


@pytest.fixture
def host(ift_host: Any) -> Any:
    ift_host.register(Plugin(), "tiny-peft", distribution="ift-tiny-peft", version="1.2")
    return ift_host


def test_penalty_updates_and_packing_come_from_the_plugin_method(host: Any, tmp_path: Any) -> None:
    tiny = load_tiny_model(host, tiny_model_table(peft={"method": "tiny-lora", "penalty": 0.25}), base_dir=tmp_path)
    assert [n for n, p in tiny.model.named_parameters() if p.requires_grad and "q_proj.lora_A" in n]
    assert tiny.adapter.supports_packing is False
    tiny.model.train()
    assert float(peft_methods.training_penalty(tiny.model)) == 0.25
    assert float(tiny.adapter.training_penalty(tiny.model)) == 0.25
    tiny.model.eval()
    assert peft_methods.training_penalty(tiny.model) is None  # in training mode only
    TinyLora.updates.clear()
    tiny.adapter.on_optimizer_step(tiny.model, 3, 10)
    assert TinyLora.updates == [(3, 10)]
    assert tiny.adapter.describe()["peft_method"] == {
        "method": "tiny-lora",
        "plugin": "tiny-peft",
        "distribution": "ift-tiny-peft",
        "version": "1.2",
    }
    assert "tiny-lora: r=2, penalty=0.25, fail_after_wrap=False" in tiny.adapter.describe()["summary"]


def test_a_failure_in_the_methods_code_names_the_plugin(host: Any, tmp_path: Any) -> None:
    with pytest.raises(ift.PluginError) as err:
        load_tiny_model(
            host, tiny_model_table(peft={"method": "tiny-lora", "fail_after_wrap": True}), base_dir=tmp_path
        )
    assert (
        "plugin 'tiny-peft' (ift-tiny-peft 1.2): PEFT method 'tiny-lora' (recipe table model.peft) "
        "after_wrap() raised RuntimeError: boom" in str(err.value)
    )
    assert isinstance(err.value.__cause__, RuntimeError)


def test_a_plugin_method_config_must_be_a_peft_method_config(ift_host: Any) -> None:
    class Loose(ift.PeftMethod):
        name = "loose"
        Config = ift.ComponentConfig

    class Registers:
        @ift.hookimpl
        def ift_register_peft_methods(self) -> list[type]:
            return [Loose]

    ift_host.register(Registers(), "loose", distribution="ift-loose")
    with pytest.raises(ift.PluginError, match=r"Loose.Config must subclass ift.PeftMethodConfig"):
        _ = ift_host.registry


def test_an_unknown_method_names_plugins_that_failed_to_load(ift_host: Any, tmp_path: Any) -> None:
    from ift.host import PluginFailure
    from ift.recipe import validate_recipe

    ift_host.failures.append(PluginFailure("research", "ift-research", "0.1.0", "ImportError: no peft", "ift_research"))
    try:
        raw = {"data": [{"source": "jsonl", "path": "d.jsonl"}], "model": tiny_model_table(peft={"method": "loha"})}
        with pytest.raises(ift.RecipeError) as err:
            validate_recipe(raw, ift_host, base_dir=tmp_path)
    finally:
        ift_host.failures.clear()
    assert "model.peft.method: 'loha' is not a PEFT method" in str(err.value)
    assert (
        "plugin 'research' (ift-research 0.1.0, entry point ift_research) failed to load and may provide it: "
        "ImportError: no peft" in str(err.value)
    )
