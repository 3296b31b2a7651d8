"""Per-source and per-task training loss: ``loss_by_example`` splits one forward pass exactly (padded and packed
batches), the trainer's events and summary carry the loss of each [[data]] table and of each task, those numbers
equal running each group's examples through the model on their own, and they add up (weighted by tokens) to the
overall loss; examples without a task are left out of the per-task figures, which are absent when no example has
a task. The meter's saved state carries both windows, so a resume reports the same figures."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer
from ift.meter import TrainMeter

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


class Silent:
    total = 0

    def step(self, *args: Any) -> None:
        pass

    def write(self, message: str) -> None:
        pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list[ift.EncodedExample]]:
    adapter = CausalLMAdapter(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY), base_dir=tmp_path_factory.mktemp("per-source")
    )
    tokenizer = adapter.load_tokenizer()
    # two sources that look different (short arithmetic, longer words), of different lengths
    examples = []
    for i in range(6):
        examples.append(
            adapter.encode(
                tokenizer,
                [ift.Segment(f"{i}+{i}=", False), ift.Segment(f"{2 * i}<|endoftext|>", True)],
                source="arith",
                record_id=str(i),
            )
        )
        examples.append(
            adapter.encode(
                tokenizer,
                [
                    ift.Segment("Say " + "ab" * (i + 1) + ": ", False),
                    ift.Segment("ba" * (i + 2) + "<|endoftext|>", True),
                ],
                source="words",
                record_id=str(i),
            )
        )  # same ids as arith: ids are per source
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


def train(
    setup: Any, trainer_cls: type = SFTTrainer, examples: list[ift.EncodedExample] | None = None, **config: Any
) -> tuple[ift.TrainResult, list[dict[str, Any]]]:
    adapter, tokenizer, default = setup
    examples = default if examples is None else examples
    events: list[dict[str, Any]] = []
    ctx = ift.TrainContext(
        model=fresh_model(adapter, tokenizer),
        tokenizer=tokenizer,
        adapter=adapter,
        train_examples=examples,
        eval_examples=[],
        seed=0,
        run_dir=Path("."),
        log_step=events.append,
        evaluate=lambda m, s: {},
        progress=Silent(),
    )
    settings = {"batch_size": 3, "max_length": 64, "log_every": 1, "shuffle": False, **config}
    return trainer_cls(SFTConfig(**settings)).train(ctx), events


@pytest.mark.parametrize("mode", ["padding", "length-grouped", "padding-free", "packing"])
def test_first_step_per_source_loss_equals_each_source_run_alone(setup, mode):
    adapter, tokenizer, examples = setup
    # one optimizer step over all examples: every forward pass sees the initial weights
    micro = 4 if mode != "packing" else 8
    _, (event,) = train(
        setup, batching=mode, batch_size=3 if mode != "packing" else 1, max_steps=1, gradient_accumulation_steps=micro
    )
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
            sum(v * n for v, n in zip(losses, tokens, strict=True)) / sum(tokens), rel=1e-9
        )
    assert summary["mean_loss"] == pytest.approx(
        sum(e["loss"] * e["trainable_tokens"] for e in events) / sum(e["trainable_tokens"] for e in events)
    )
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

    changed_result, (changed,) = train(
        setup, ChangedObjective, batching="padding", max_steps=1, gradient_accumulation_steps=4
    )
    assert changed["loss"] == pytest.approx(plain["loss"] + 0.5, rel=1e-6)  # trained as before
    assert "loss_by_source" not in changed and "loss_by_source" not in changed_result.summary

    own_result, (own,) = train(setup, OwnBreakdown, batching="padding", max_steps=1, gradient_accumulation_steps=4)
    assert own["loss"] == pytest.approx(plain["loss"] + 0.5, rel=1e-6)
    assert own["loss_by_source"] == pytest.approx({s: v + 0.5 for s, v in plain["loss_by_source"].items()}, rel=1e-6)
    assert own_result.summary["loss_by_source"] == pytest.approx(own["loss_by_source"], rel=1e-9)


def with_tasks(examples: list[ift.EncodedExample]) -> list[ift.EncodedExample]:
    """arith (task "math"), words split by parity into two sources "words" and "spell" that share the task "text",
    and one arith example moved to a source "plain" without a task."""
    out = []
    for e in examples:
        if e.source == "arith":
            out.append(replace(e, source="plain", task=None) if e.record_id == "5" else replace(e, task="math"))
        else:
            out.append(replace(e, source="words" if int(e.record_id) % 2 == 0 else "spell", task="text"))
    return out


@pytest.mark.parametrize("mode", ["padding", "packing"])
def test_per_task_loss_combines_the_sources_of_a_task(setup, mode):
    adapter, tokenizer, examples = setup
    tagged = with_tasks(examples)
    micro = 4 if mode != "packing" else 8
    _, (event,) = train(
        setup,
        examples=tagged,
        batching=mode,
        batch_size=3 if mode != "packing" else 1,
        max_steps=1,
        gradient_accumulation_steps=micro,
    )
    assert set(event["loss_by_source"]) == {"arith", "plain", "words", "spell"}
    assert set(event["loss_by_task"]) == set(event["trainable_tokens_by_task"]) == {"math", "text"}
    by_source, tokens = event["loss_by_source"], event["trainable_tokens_by_source"]
    # one task from one source, one task from two: the token-weighted combination of those sources
    assert event["loss_by_task"]["math"] == by_source["arith"]
    assert event["trainable_tokens_by_task"]["math"] == tokens["arith"]
    assert event["trainable_tokens_by_task"]["text"] == tokens["words"] + tokens["spell"]
    assert event["loss_by_task"]["text"] == pytest.approx(
        (by_source["words"] * tokens["words"] + by_source["spell"] * tokens["spell"])
        / (tokens["words"] + tokens["spell"]),
        rel=1e-9,
    )
    # and the same as running the task's examples alone; the example without a task is in no task's figures
    model = fresh_model(adapter, tokenizer)
    for task in ("math", "text"):
        expected, n = alone(adapter, tokenizer, model, [e for e in tagged if e.task == task])
        assert event["trainable_tokens_by_task"][task] == n
        assert event["loss_by_task"][task] == pytest.approx(expected / n, rel=1e-5)
    assert sum(event["trainable_tokens_by_task"].values()) == event["trainable_tokens"] - tokens["plain"] > 0


def test_per_task_summary_and_absence_without_tasks(setup):
    result, events = train(setup, examples=with_tasks(setup[2]), batching="padding", max_steps=4, log_every=2)
    summary = result.summary
    for task in ("math", "text"):
        tokens = [e["trainable_tokens_by_task"].get(task, 0) for e in events]
        losses = [e["loss_by_task"].get(task, 0.0) for e in events]
        assert summary["trainable_tokens_by_task"][task] == sum(tokens) > 0
        assert summary["loss_by_task"][task] == pytest.approx(
            sum(v * n for v, n in zip(losses, tokens, strict=True)) / sum(tokens), rel=1e-9
        )

    plain_result, plain_events = train(setup, batching="padding", max_steps=2, log_every=1)
    assert all(
        "loss_by_source" in e and "loss_by_task" not in e and "trainable_tokens_by_task" not in e for e in plain_events
    )
    assert "loss_by_source" in plain_result.summary and "loss_by_task" not in plain_result.summary


class OneProcess:
    """What the meter uses of an Accelerator, for one process on the CPU."""

    device = torch.device("cpu")
    num_processes = 1

    def reduce(self, tensor: Any, reduction: str) -> Any:
        return tensor


def test_meter_state_keeps_the_per_task_window_across_a_resume(setup):
    adapter, tokenizer, _ = setup
    model = fresh_model(adapter, tokenizer)
    groups = {"source": ["a", "b"], "task": ["t", "u"]}

    def meter() -> TrainMeter:
        return TrainMeter(OneProcess(), torch.device("cpu"), model, 64, groups)

    batch = {
        "sources": ["a", "b", "b", "a"],
        "tasks": ["t", None, "u", "t"],
        "input_ids": torch.zeros(4, 5),
        "real_tokens": 20,
        "num_examples": 4,
        "loss_tokens": 10,
    }
    sums, counts = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 2, 3, 4])
    first = meter()
    first.add_batch(batch)
    first.loss += 10.0
    step = first.zeros()
    assert first.add_examples(step, batch, sums, counts)
    first.add_groups(step, 0)
    done = first.event(1, 0.5, 1e-3, 1.0, 0.0)  # a logged step: goes into the run totals
    assert done["loss_by_task"] == {"t": 5 / 5, "u": 3 / 3} and done["trainable_tokens_by_task"] == {"t": 5, "u": 3}
    assert done["loss_by_source"] == {"a": 5 / 5, "b": 5 / 5}
    step = first.zeros()
    assert first.add_examples(step, batch, sums * 2, counts)
    first.add_groups(step, 0)
    first.add_batch(batch)
    first.loss += 20.0

    resumed = meter()
    resumed.restore(json.loads(json.dumps(first.state())))  # checkpoints store the state as JSON
    a, b = first.event(2, 1.0, 1e-3, 1.0, 0.0), resumed.event(2, 1.0, 1e-3, 1.0, 0.0)
    for key in ("loss_by_task", "trainable_tokens_by_task", "loss_by_source", "trainable_tokens_by_source"):
        assert a[key] == b[key]
    assert a["loss_by_task"] == {"t": 2.0, "u": 2.0}
    assert first.totals(1.0)["loss_by_task"] == resumed.totals(1.0)["loss_by_task"] == {"t": 1.5, "u": 1.5}

    without = meter()  # a batch that lists no tasks cannot be split by task: no per-group figures for it
    assert not without.add_examples(without.zeros(), {"sources": batch["sources"]}, sums, counts)


class RebuildingFit(CausalLMAdapter):
    """An adapter whose own length policy builds a new example and knows nothing of tasks (as seq2seq's does)."""

    def fit(self, example: ift.EncodedExample, *, max_length: int, overlong: Any) -> tuple[Any, Any]:
        return ift.EncodedExample(example.input_ids, example.labels, example.source, example.record_id), None


@pytest.mark.parametrize("adapter_cls", [CausalLMAdapter, RebuildingFit])
def test_encoded_examples_carry_the_record_task(adapter_cls, tmp_path):
    from ift.builtin_plugins.renderers import ChatMLRenderer
    from ift.data import DataReport, encode_records

    adapter = adapter_cls(adapter_cls.Config(tokenizer="byte-level", from_config=TINY), base_dir=tmp_path)
    tokenizer = adapter.load_tokenizer()
    renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tokenizer)
    records = [
        ift.InstructionRecord(
            f"r{i}", "s", [ift.Message("user", "q" * (i + 1)), ift.Message("assistant", "a")], task=task
        )
        for i, task in enumerate(["qa", None, "chat"])
    ]
    config = ift.TrainerConfig(max_length=200, overlong="truncate")
    examples, kept = encode_records(records, renderer, adapter, tokenizer, config, "train", DataReport())
    assert [(e.record_id, e.task) for e in examples] == [("r0", "qa"), ("r1", None), ("r2", "chat")]
    assert [r.task for r in kept] == [e.task for e in examples]
    # the core length policy keeps the task of an example it truncates
    longer = replace(examples[0], input_ids=examples[0].input_ids + [0, 0], labels=examples[0].labels + [-100, -100])
    cut, reason = ift.ModelAdapter.fit(adapter, longer, max_length=len(examples[0].input_ids), overlong="truncate")
    assert reason == "truncated to max_length" and cut.truncated and cut.task == "qa"
