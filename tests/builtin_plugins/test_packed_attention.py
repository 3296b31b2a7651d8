"""Packed rows attended one example at a time (``ift_sdpa``): the same outputs and gradients as transformers'
masked ``sdpa``, only where the mask is block-diagonal causal, and nothing of it in a saved model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from ift.builtin_plugins import packed_attention
from ift.builtin_plugins.causal_lm import CausalLMAdapter

SMALL = {
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in most real models
}
LENGTHS = [5, 9, 3, 7]


def packed(lengths, rows=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, SMALL["vocab_size"], (rows, sum(lengths)), generator=generator)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).repeat(rows, 1)
    return ids, positions


def model_pair(cls=LlamaForCausalLM, config=None):
    torch.manual_seed(0)
    reference = cls(config or LlamaConfig(**SMALL)).eval()
    ours = cls(reference.config.__class__(**reference.config.to_dict())).eval()
    ours.load_state_dict(reference.state_dict())
    assert reference.config._attn_implementation == "sdpa"
    assert packed_attention.use_for(ours)
    return reference, ours


@pytest.fixture
def split_calls(monkeypatch):
    """How many spans lists the attention function found (one per forward pass that was split)."""
    found = []
    original = packed_attention._split

    def spy(*args):
        result = original(*args)
        if result is not None:
            found.append(result)
        return result

    monkeypatch.setattr(packed_attention, "_split", spy)
    packed_attention._last = None
    return found


def test_spans_read_packed_positions_only():
    _, positions = packed([3, 2, 4], rows=1)
    assert packed_attention.spans(positions) == [[(0, 3), (3, 5), (5, 9)]]
    assert packed_attention.spans(torch.arange(6).unsqueeze(0)) is None  # one example per row
    assert packed_attention.spans(torch.tensor([[1, 1, 0, 1, 2]])) is None  # left-padded generation
    assert packed_attention.spans(torch.tensor([[0, 1, 3, 0, 1]])) is None  # a gap: not packed examples
    assert packed_attention.spans(torch.tensor([[2, 3, 0, 1]])) is None  # a row starting inside an example


def test_packed_rows_match_each_example_alone_and_masked_sdpa(split_calls):
    reference, ours = model_pair()
    ids, positions = packed(LENGTHS)
    with torch.no_grad():
        masked = reference(input_ids=ids, position_ids=positions, use_cache=False).logits
        split = ours(input_ids=ids, position_ids=positions, use_cache=False).logits
        starts = [0, 5, 14, 17]
        alone = torch.cat(
            [
                reference(input_ids=ids[:, s : s + n], use_cache=False).logits
                for s, n in zip(starts, LENGTHS, strict=True)
            ],
            1,
        )
    assert len(split_calls) == 1  # checked once for the forward pass, used by both layers
    assert split_calls[0] == [[(0, 5), (5, 14), (14, 17), (17, 24)]] * 2
    torch.testing.assert_close(split, masked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split, alone, rtol=1e-5, atol=1e-5)


def test_gradients_match_under_activation_checkpointing(split_calls):
    from ift.builtin_plugins.hf_loading import enable_gradient_checkpointing

    reference, ours = model_pair()
    ids, positions = packed(LENGTHS)
    grads = []
    for model in (reference, ours):
        model.train()
        enable_gradient_checkpointing(model)
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert split_calls  # the forward pass and its recomputation in backward were split
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_everything_else_is_sdpa_unchanged(split_calls):
    reference, ours = model_pair()
    ids, positions = packed(LENGTHS)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    with torch.no_grad():
        for kwargs in (
            {"input_ids": ids, "use_cache": False},  # one example per row: no mask, plain causal
            {"input_ids": ids, "attention_mask": mask, "use_cache": False},  # padding
            {"input_ids": ids, "position_ids": positions},  # a cache: transformers attends causally over the row
            {"input_ids": ids, "position_ids": positions, "attention_mask": mask, "use_cache": False},
        ):
            assert torch.equal(ours(**kwargs).logits, reference(**kwargs).logits), sorted(kwargs)
    assert split_calls == []


def test_generation_is_unchanged():
    reference, ours = model_pair()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    settings = {"attention_mask": mask, "max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(ours.generate(ids, **settings), reference.generate(ids, **settings))


def test_a_sliding_window_that_cuts_an_example_keeps_the_mask(split_calls):
    config = MistralConfig(**SMALL, sliding_window=4)
    reference, ours = model_pair(MistralForCausalLM, config)
    ids, positions = packed(LENGTHS)
    with torch.no_grad():
        masked = reference(input_ids=ids, position_ids=positions, use_cache=False).logits
        assert torch.equal(ours(input_ids=ids, position_ids=positions, use_cache=False).logits, masked)
    assert split_calls == []
    wide, wide_ours = model_pair(MistralForCausalLM, MistralConfig(**SMALL, sliding_window=16))
    with torch.no_grad():
        torch.testing.assert_close(
            wide_ours(input_ids=ids, position_ids=positions, use_cache=False).logits,
            wide(input_ids=ids, position_ids=positions, use_cache=False).logits,
            rtol=1e-5,
            atol=1e-5,
        )
    assert len(split_calls) == 1  # every example fits in the window: split


def test_only_sdpa_is_switched_and_nothing_is_saved(tmp_path: Path):
    eager = LlamaForCausalLM(LlamaConfig(**SMALL, attn_implementation="eager"))
    assert not packed_attention.use_for(eager)
    assert eager.config._attn_implementation == "eager"
    _, ours = model_pair()
    ours.save_pretrained(tmp_path)
    assert "ift" not in (tmp_path / "config.json").read_text()
    assert "attn_implementation" not in json.loads((tmp_path / "config.json").read_text())
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"


def test_the_causal_lm_adapter_switches_on_a_cpu_unless_told(tmp_path: Path):
    tiny = {"model_type": "llama", **{k: v for k, v in SMALL.items() if k != "vocab_size"}}
    adapter = CausalLMAdapter(CausalLMAdapter.Config(tokenizer="byte-level", from_config=tiny), base_dir=tmp_path)
    assert adapter.load_model(adapter.load_tokenizer()).config._attn_implementation == packed_attention.NAME
    told = CausalLMAdapter(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config=tiny, attn_implementation="sdpa"),
        base_dir=tmp_path,
    )
    assert told.load_model(told.load_tokenizer()).config._attn_implementation == "sdpa"
    lora = CausalLMAdapter(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config=tiny, peft={"method": "lora", "r": 4}),
        base_dir=tmp_path,
    )
    wrapped = lora.load_model(lora.load_tokenizer())
    assert hasattr(wrapped, "get_base_model")  # peft's wrapper: its base model is switched
    assert wrapped.get_base_model().config._attn_implementation == packed_attention.NAME
