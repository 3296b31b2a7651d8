"""The loss is the same in every batching mode, and packed rows never let attention cross examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ift
from ift.batching import pack_best_fit_decreasing
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer, resolve_batching

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


@pytest.fixture(scope="module")
def setup():
    adapter = CausalLMAdapter(CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY), base_dir=Path("."))
    tokenizer = adapter.load_tokenizer()
    torch.manual_seed(0)
    model = adapter.load_model(tokenizer).eval()
    examples = [
        adapter.encode(
            tokenizer,
            [
                ift.Segment(f"question {i}: " + "x" * (i * 7 % 23), False),
                ift.Segment("answer " + "y" * (i % 5) + "<|endoftext|>", True),
            ],
            source="s",
            record_id=str(i),
        )
        for i in range(13)
    ]
    return adapter, tokenizer, model, examples


def total_loss(adapter, model, batches):
    loss, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            s, n = adapter.loss_sum(model, batch)
            loss, count = loss + float(s), count + int(n)
    return loss, count


def test_loss_is_identical_across_batching_modes(setup):
    adapter, tokenizer, model, examples = setup
    reference = total_loss(adapter, model, [adapter.collate(tokenizer, [e]) for e in examples])
    padded = total_loss(adapter, model, [adapter.collate(tokenizer, examples[i : i + 4]) for i in range(0, 13, 4)])
    free = total_loss(
        adapter, model, [adapter.collate_packed(tokenizer, [examples[i : i + 4]]) for i in range(0, 13, 4)]
    )
    bins = pack_best_fit_decreasing([len(e.input_ids) for e in examples], 96)
    packed = total_loss(adapter, model, [adapter.collate_packed(tokenizer, [[examples[i] for i in b] for b in bins])])
    for got in (padded, free, packed):
        assert got[1] == reference[1]
        assert got[0] == pytest.approx(reference[0], rel=1e-5)


def test_packed_rows_reset_positions_and_mask_each_first_token(setup):
    adapter, tokenizer, _, examples = setup
    a, b = examples[1], examples[2]
    batch = adapter.collate_packed(tokenizer, [[a, b], [b]])
    la, lb = len(a.input_ids), len(b.input_ids)
    assert batch["position_ids"][0].tolist() == list(range(la)) + list(range(lb))
    # the shorter second row ends in a padding tail that is a sequence of its own, with no labels
    assert batch["position_ids"][1].tolist() == list(range(lb)) + list(range(la))
    assert batch["labels"][0, la].item() == -100 and batch["labels"][1, lb:].eq(-100).all()
    assert batch["input_ids"][0].tolist() == a.input_ids + b.input_ids
    assert int(batch["real_tokens"]) == la + 2 * lb and int(batch["num_examples"]) == 3
    assert "attention_mask" not in batch


def test_packed_example_logits_equal_its_logits_alone(setup):
    adapter, tokenizer, model, examples = setup
    a, b = examples[3], examples[4]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b.input_ids])).logits[0]
        batch = adapter.collate_packed(tokenizer, [[a, b]])
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    torch.testing.assert_close(packed[len(a.input_ids) :], alone, rtol=1e-4, atol=1e-5)


def test_auto_batching_picks_by_hardware(setup):
    adapter = setup[0]
    assert resolve_batching("auto", adapter, torch.device("cpu")) == "length-grouped"
    assert resolve_batching("auto", adapter, torch.device("cuda")) == "padding-free"
    assert resolve_batching("packing", adapter, torch.device("cpu")) == "packing"


@pytest.mark.parametrize("mode", ["padding", "length-grouped", "padding-free", "packing"])
def test_trainer_counts_tokens_from_the_tensors(setup, mode, tmp_path):
    adapter, tokenizer, _, examples = setup
    torch.manual_seed(0)
    model = adapter.load_model(tokenizer)
    events = []
    trainer = SFTTrainer(
        SFTConfig(batching=mode, batch_size=4 if mode != "packing" else 1, max_steps=4, log_every=100, max_length=128)
    )
    ctx = ift.TrainContext(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        train_examples=examples,
        eval_examples=[],
        seed=0,
        run_dir=tmp_path,
        log_step=events.append,
        evaluate=lambda m, s: {},
        progress=_Silent(),
    )
    result = trainer.train(ctx)
    assert result.summary["batching"] == mode
    (event,) = events
    # four steps cover the 13 examples once (4+4+4+1) except packing, whose rows hold several examples
    if mode != "packing":
        assert event["tokens"] == sum(len(e.input_ids) for e in examples)
        assert event["trainable_tokens"] == sum(e.trainable_tokens for e in examples)
    assert 0 <= event["padding_fraction"] < 1 and 0 <= event["data_wait_fraction"] <= 1
    assert event["peak_memory_mb"] > 0 and event["memory"] == "peak_rss"
    if mode in ("padding-free", "packing"):
        assert event["padding_fraction"] < 0.05 if mode == "padding-free" else True


class _Silent:
    total = 0

    def step(self, *args):
        pass
