"""Numbers that go bad: a non-finite loss stops the run naming the step and examples, unless a bounded
number of skips is allowed; a batch with no trainable tokens contributes zero, not NaN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer

TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


class Silent:
    total = 0

    def step(self, *args):
        pass

    def write(self, message):
        self.last = message


class PoisonedStep(SFTTrainer):
    """Returns a NaN loss on the batches of one optimizer step."""

    poisoned_call = 2

    def loss(self, ctx, model, batch):
        self.calls = getattr(self, "calls", 0) + 1
        loss, count = super().loss(ctx, model, batch)
        return (loss * float("nan"), count) if self.calls == self.poisoned_call else (loss, count)


@pytest.fixture
def setup(tmp_path: Path):
    adapter = CausalLMAdapter(CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY), base_dir=tmp_path)
    tokenizer = adapter.load_tokenizer()
    torch.manual_seed(0)
    model = adapter.load_model(tokenizer)
    examples = [
        adapter.encode(
            tokenizer,
            [ift.Segment(f"q{i}\n", False), ift.Segment(f"a{i}<|endoftext|>", True)],
            source="s",
            record_id=f"row-{i}",
        )
        for i in range(8)
    ]

    def context(events):
        return ift.TrainContext(
            model=model,
            tokenizer=tokenizer,
            adapter=adapter,
            train_examples=examples,
            eval_examples=[],
            seed=0,
            run_dir=tmp_path,
            log_step=events.append,
            evaluate=lambda m, s: {},
            progress=Silent(),
        )

    return context


def test_non_finite_loss_stops_with_step_and_example_ids(setup):
    trainer = PoisonedStep(SFTConfig(batch_size=2, max_steps=4, shuffle=False, batching="padding"))
    with pytest.raises(ift.RunError) as err:
        trainer.train(setup([]))
    assert str(err.value).startswith("non-finite loss at step 2 (examples row-2, row-3)")


def test_bounded_skips_are_counted_and_training_goes_on(setup):
    events: list = []
    trainer = PoisonedStep(
        SFTConfig(batch_size=2, max_steps=4, shuffle=False, batching="padding", skip_nonfinite_steps=1, log_every=1)
    )
    result = trainer.train(setup(events))
    assert result.summary["skipped_nonfinite_steps"] == 1 and result.steps == 4
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert all(p.isfinite().all() for p in result.model.parameters())


def test_batch_without_trainable_tokens_contributes_zero(setup):
    ctx = setup([])
    masked = ift.EncodedExample([5, 6, 7], [-100, -100, -100], "s", "masked")
    batch = ctx.adapter.collate(ctx.tokenizer, [masked])
    loss, count = ctx.adapter.loss_sum(ctx.model, batch)
    assert float(loss.detach()) == 0.0 and int(count) == 0
