"""Per-source training loss: ``loss_by_example`` splits one forward pass exactly (padded and packed batches), the
trainer's events and summary carry the loss of each [[data]] table, those numbers equal running each source's
examples through the model on their own, and they add up (weighted by tokens) to the overall loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer

TINY = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2}


class Silent:
    total = 0

    def step(self, *args: Any) -> None:
        pass

    def write(self, message: str) -> None:
        pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list[ift.EncodedExample]]:
    adapter = CausalLMAdapter(CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY),
                              base_dir=tmp_path_factory.mktemp("per-source"))
    tokenizer = adapter.load_tokenizer()
    # two sources that look different (short arithmetic, longer words), of different lengths
    examples = []
    for i in range(6):
        examples.append(adapter.encode(tokenizer, [ift.Segment(f"{i}+{i}=", False),
                                                   ift.Segment(f"{2 * i}<|endoftext|>", True)],
                                       source="arith", record_id=str(i)))
        examples.append(adapter.encode(tokenizer, [ift.Segment("Say " + "ab" * (i + 1) + ": ", False),
                                                   ift.Segment("ba" * (i + 2) + "<|endoftext|>", True)],
                                       source="words", record_id=str(i)))  # same ids as arith: ids are per source
    return adapter, tokenizer, examples


def fresh_model(adapter: Any, tokenizer: Any) -> Any:
    torch.manual_seed(0)
    return adapter.load_model(tokenizer)


def alone(adapter: Any, tokenizer: Any, model: Any, examples: list[ift.EncodedExample]) -> tuple[float, int]:
    """Summed loss and tokens of examples, each run through the model in a batch of its own."""
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            s, n = adapter.loss_sum(model, adapter.collate(tokenizer, [e]))
            total, count = total + float(s), count + int(n)
    return total, count


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_loss_by_example_splits_one_forward_pass_exactly(setup, packed):
    adapter, tokenizer, examples = setup
    model = fresh_model(adapter, tokenizer).eval()
    if packed:  # three rows of several examples each, and a padded tail on the shorter rows
        batch = adapter.collate_packed(tokenizer, [examples[0:5], examples[5:7], examples[7:12]])
    else:
        batch = adapter.collate(tokenizer, examples[:7])
    order = examples[:12] if packed else examples[:7]
    assert batch["record_ids"] == [e.record_id for e in order]
    with torch.no_grad():
        sums, counts = adapter.loss_by_example(model, batch)
        total, tokens = adapter.loss_sum(model, batch)
    for i, e in enumerate(order):
        expected, n = alone(adapter, tokenizer, model, [e])
        assert int(counts[i]) == n == e.trainable_tokens - (e.labels[0] != -100)
        assert float(sums[i]) == pytest.approx(expected, rel=1e-5)
    assert int(counts.sum()) == int(tokens) == int(batch["loss_tokens"])
    assert float(sums.sum()) == pytest.approx(float(total), rel=1e-6)


def test_the_gradient_is_that_of_loss_sum_bit_for_bit(setup):
    adapter, tokenizer, examples = setup
    grads = []
    for split in (False, True):
        model = fresh_model(adapter, tokenizer)
        batch = adapter.collate(tokenizer, examples[:6])
        loss = adapter.loss_by_example(model, batch)[0].sum() if split else adapter.loss_sum(model, batch)[0]
        (loss / 7).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def train(setup: Any, trainer_cls: type = SFTTrainer, **config: Any) -> tuple[ift.TrainResult, list[dict[str, Any]]]:
    adapter, tokenizer, examples = setup
    events: list[dict[str, Any]] = []
    ctx = ift.TrainContext(model=fresh_model(adapter, tokenizer), tokenizer=tokenizer, adapter=adapter,
                           train_examples=examples, eval_examples=[], seed=0, run_dir=Path("."),
                           log_step=events.append, evaluate=lambda m, s: {}, progress=Silent())
    settings = {"batch_size": 3, "max_length": 64, "log_every": 1, "shuffle": False, **config}
    return trainer_cls(SFTConfig(**settings)).train(ctx), events


@pytest.mark.parametrize("mode", ["padding", "length-grouped", "padding-free", "packing"])
def test_first_step_per_source_loss_equals_each_source_run_alone(setup, mode):
    adapter, tokenizer, examples = setup
    # one optimizer step over all examples: every forward pass sees the initial weights
    micro = 4 if mode != "packing" else 8
    _, (event,) = train(setup, batching=mode, batch_size=3 if mode != "packing" else 1, max_steps=1,
                        gradient_accumulation_steps=micro)
    model = fresh_model(adapter, tokenizer)
    for source in ("arith", "words"):
        expected, n = alone(adapter, tokenizer, model, [e for e in examples if e.source == source])
        assert event["trainable_tokens_by_source"][source] == n
        assert event["loss_by_source"][source] == pytest.approx(expected / n, rel=1e-5)
    weighted = sum(event["loss_by_source"][s] * event["trainable_tokens_by_source"][s] for s in ("arith", "words"))
    assert sum(event["trainable_tokens_by_source"].values()) == event["trainable_tokens"]
    assert weighted / event["trainable_tokens"] == pytest.approx(event["loss"], rel=1e-6)


def test_run_summary_is_the_token_weighted_mean_of_the_events(setup):
    result, events = train(setup, batching="padding", max_steps=4, log_every=2)
    assert [e["step"] for e in events] == [2, 4]
    summary = result.summary
    for source in ("arith", "words"):
        tokens = [e["trainable_tokens_by_source"].get(source, 0) for e in events]
        losses = [e["loss_by_source"].get(source, 0.0) for e in events]
        assert summary["trainable_tokens_by_source"][source] == sum(tokens)
        assert summary["loss_by_source"][source] == pytest.approx(
            sum(v * n for v, n in zip(losses, tokens, strict=True)) / sum(tokens), rel=1e-9)
    assert summary["mean_loss"] == pytest.approx(
        sum(e["loss"] * e["trainable_tokens"] for e in events) / sum(e["trainable_tokens"] for e in events))
    weighted = sum(summary["loss_by_source"][s] * summary["trainable_tokens_by_source"][s] for s in ("arith", "words"))
    assert weighted / summary["trainable_tokens"] == pytest.approx(summary["mean_loss"], rel=1e-6)


class ChangedObjective(SFTTrainer):
    """Adds a constant per token: the objective differs from the cross-entropy that was split by example."""

    def loss(self, ctx: Any, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        loss_sum, count = super().loss(ctx, model, batch)
        return loss_sum + 0.5 * count, count


class Unchanged(SFTTrainer):
    def loss(self, ctx: Any, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        return super().loss(ctx, model, batch)


class OwnBreakdown(SFTTrainer):
    """Changes the objective and reports its own per-example sums from the same forward pass."""

    def loss(self, ctx: Any, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        sums, counts = ctx.adapter.loss_by_example(model, batch)
        return self.example_losses(batch, sums + 0.5 * counts, counts)


def test_subclasses_that_override_loss(setup):
    reference, (plain,) = train(setup, batching="padding", max_steps=1, gradient_accumulation_steps=4)
    _, (unchanged,) = train(setup, Unchanged, batching="padding", max_steps=1, gradient_accumulation_steps=4)
    assert unchanged["loss_by_source"] == plain["loss_by_source"]

    changed_result, (changed,) = train(setup, ChangedObjective, batching="padding", max_steps=1,
                                       gradient_accumulation_steps=4)
    assert changed["loss"] == pytest.approx(plain["loss"] + 0.5, rel=1e-6)  # trained as before
    assert "loss_by_source" not in changed and "loss_by_source" not in changed_result.summary

    own_result, (own,) = train(setup, OwnBreakdown, batching="padding", max_steps=1, gradient_accumulation_steps=4)
    assert own["loss"] == pytest.approx(plain["loss"] + 0.5, rel=1e-6)
    assert own["loss_by_source"] == pytest.approx({s: v + 0.5 for s, v in plain["loss_by_source"].items()},
                                                  rel=1e-6)
    assert own_result.summary["loss_by_source"] == pytest.approx(own["loss_by_source"], rel=1e-9)
