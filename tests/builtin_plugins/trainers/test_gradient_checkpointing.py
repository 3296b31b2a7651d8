"""[trainer] gradient_checkpointing: the same loss and gradients with and without (full fine-tuning and LoRA),
layers really recomputed in backward, a whole sft run with the same losses, and adapters without support
refused when the recipe is validated."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import ift
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer

from .helpers import TINY, WORDS, build, encode

LORA = {"method": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]}


def loss_and_grads(adapter: Any, model: Any, batch: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    model.zero_grad()
    torch.manual_seed(1)  # LoRA's dropout draws the same masks (the recomputation replays the RNG state)
    total, _ = adapter.loss_sum(model, batch)
    total.backward()
    return total.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("peft", [None, LORA], ids=["full", "lora"])
def test_same_loss_and_gradients_with_layers_recomputed(tmp_path, peft):
    adapter, tokenizer, model = build(
        tmp_path, from_config={**TINY, "num_hidden_layers": 2}, **({"peft": peft} if peft else {})
    )
    model.train()
    batch = adapter.collate(tokenizer, [encode(adapter, tokenizer, w) for w in WORDS[:6]])
    plain_loss, plain = loss_and_grads(adapter, model, batch)

    adapter.enable_gradient_checkpointing(model)
    # (a module early in the layer: the recomputation stops once it has what backward needs)
    q_proj = (model.get_base_model() if peft else model).model.layers[0].self_attn.q_proj
    calls: list[bool] = []
    q_proj.register_forward_hook(lambda m, args, out: calls.append(torch.is_grad_enabled()))
    checked_loss, checked = loss_and_grads(adapter, model, batch)
    assert len(calls) == 2  # once in the forward pass, once recomputed in backward
    assert checked_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == checked.keys() and plain
    if peft:
        assert all("lora" in name for name in plain)
    for name, grad in plain.items():
        assert torch.allclose(checked[name], grad, rtol=1e-5, atol=1e-7), name


def test_an_sft_run_logs_the_same_losses(tmp_path, make_context):
    def run(**options: Any) -> list[float]:
        adapter, tokenizer, model = build(tmp_path)
        events: list[dict[str, Any]] = []
        ctx = make_context(adapter, tokenizer, model, [encode(adapter, tokenizer, w) for w in WORDS])
        ctx.log_step = events.append
        SFTTrainer(
            SFTConfig(max_steps=3, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, log_every=1, **options)
        ).train(ctx)
        return [e["loss"] for e in events if "loss" in e]

    plain, checked = run(), run(gradient_checkpointing=True)
    assert len(plain) == 3 and checked == pytest.approx(plain, rel=1e-5)


def test_validation_refuses_an_adapter_without_support():
    class Plain:  # stands in for a third-party adapter class that does not declare support
        supports_gradient_checkpointing = False

    context = {"model": SimpleNamespace(cls=Plain, name="my-adapter")}
    with pytest.raises(
        ValueError, match="gradient_checkpointing = true needs a model adapter that supports it; 'my-adapter' does not"
    ):
        ift.TrainerConfig.model_validate({"gradient_checkpointing": True}, context=context)
    assert ift.TrainerConfig.model_validate({"gradient_checkpointing": False}, context=context)
    from ift.builtin_plugins.causal_lm import CausalLMAdapter

    supported = {"model": SimpleNamespace(cls=CausalLMAdapter, name="causal-lm")}
    assert SFTConfig.model_validate({"gradient_checkpointing": True}, context=supported).gradient_checkpointing
