"""The trainers beyond ``sft`` are objectives on the loop: registered with ``ift_register_objectives``, each
becomes its own trainer class, logs its figures per step, and ``continual`` adds its replayed examples through
the declared data seam (``training_examples``) instead of a changed context."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import ift
from ift.builtin_plugins.trainers import (
    AdversarialTrainer,
    ContinualTrainer,
    Distillation,
    DistillTrainer,
    ElasticWeightConsolidation,
    EmbeddingAdversarial,
)
from ift.builtin_plugins.trainers.continual import ContinualConfig
from ift.host import PluginHost

from .helpers import WORDS, encode

STEPS = {"batch_size": 3, "log_every": 1, "shuffle": False, "batching": "padding", "learning_rate": 5e-3}


def test_each_is_a_registered_objective_whose_trainer_is_its_own_class():
    host = PluginHost(entry_points=False)
    for objective, trainer in (
        (EmbeddingAdversarial, AdversarialTrainer),
        (ElasticWeightConsolidation, ContinualTrainer),
        (Distillation, DistillTrainer),
    ):
        assert host.registry["objective"][objective.name].cls is objective
        assert host.registry["trainer"][objective.name].cls is trainer
        assert trainer.objective_class is objective and issubclass(trainer, ift.ObjectiveTrainer)


def run(trainer: ift.SFTTrainer, ctx: ift.TrainContext) -> tuple[ift.TrainResult, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    ctx.log_step = events.append
    return trainer.train(ctx), events


def test_adversarial_figures_are_logged_each_step_and_agree_with_the_summary(tiny, make_context):
    adapter, tokenizer, model = tiny
    ctx = make_context(adapter, tokenizer, model.train(), [encode(adapter, tokenizer, w) for w in WORDS[:6]])
    trainer = AdversarialTrainer(AdversarialTrainer.Config(epsilon=0.5, max_steps=2, **STEPS))
    result, events = run(trainer, ctx)
    assert [e["step"] for e in events] == [1, 2]
    for event in events:
        assert 0 < event["clean_loss"] < event["adversarial_loss"]
        # the objective trained (w = 0.5) is the mean of the two, per trained token
        assert event["loss"] == pytest.approx((event["clean_loss"] + event["adversarial_loss"]) / 2, rel=1e-5)
    summary = result.summary["adversarial"]
    tokens = [e["trainable_tokens"] for e in events]
    for key in ("clean_loss", "adversarial_loss"):  # the summary: the steps' means weighted by trained tokens
        mean = sum(e[key] * n for e, n in zip(events, tokens, strict=True)) / sum(tokens)
        assert summary[key] == pytest.approx(mean, rel=1e-5)


def test_distill_logs_cross_entropy_and_kl_each_step(tiny, make_context, tmp_path: Path):
    adapter, tokenizer, model = tiny
    adapter.save(model, tokenizer, tmp_path / "teacher")
    ctx = make_context(adapter, tokenizer, model.train(), [encode(adapter, tokenizer, w) for w in WORDS[:3]])
    trainer = DistillTrainer(
        DistillTrainer.Config(teacher=str(tmp_path / "teacher"), alpha=0.5, temperature=2.0, max_steps=2, **STEPS)
    )
    result, events = run(trainer, ctx)
    first, second = events
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # the student starts as the teacher
    assert second["kl"] > 0
    for event in events:  # (1 - alpha) * CE + alpha * T^2 * KL
        assert event["loss"] == pytest.approx(0.5 * event["ce_loss"] + 0.5 * 2.0**2 * event["kl"], rel=1e-5)
    # one batch of the same three examples per step: the summary is the mean of the steps
    assert result.summary["distill"]["kl"] == pytest.approx((first["kl"] + second["kl"]) / 2, rel=1e-5)


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    run = tmp_path / "task-a"
    (run / "data").mkdir(parents=True)
    rows = [
        ift.InstructionRecord(
            id=f"old.jsonl:{i}",
            source="old",
            messages=[ift.Message("user", f"Reverse {w}"), ift.Message("assistant", w[::-1])],
        ).to_dict()
        for i, w in enumerate(["ant", "bee", "cow", "elk"])
    ]
    (run / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def continual_context(tiny, make_context) -> ift.TrainContext:
    from ift.builtin_plugins.renderers import AlpacaRenderer

    adapter, tokenizer, model = tiny
    renderer = AlpacaRenderer(AlpacaRenderer.Config(), base_dir=Path("."))
    renderer.bind(tokenizer)

    def encode_records(records):
        return [adapter.encode_record(tokenizer, r, renderer.render(r)) for r in records]

    new = [encode(adapter, tokenizer, w, source="new") for w in WORDS[:6]]
    return make_context(
        adapter,
        tokenizer,
        model.train(),
        new,
        encode_records=encode_records,
        evaluate_records=lambda m, records, stage: {"overall": {"loss": 1.0, "n": len(records)}},
    )


def test_continual_trains_on_its_replayed_examples_through_the_data_seam(tiny, make_context, previous):
    ctx = continual_context(tiny, make_context)
    new = list(ctx.train_examples)
    trainer = ContinualTrainer(ContinualConfig(previous_run=str(previous), replay_examples=3, max_steps=3, **STEPS))
    result, events = run(trainer, ctx)
    assert ctx.train_examples == new  # the context is not changed: the trainer declares its examples
    examples = trainer.training_examples(ctx)
    assert len(examples) == 9 and [e.source for e in examples].count("old") == 3
    # 3 steps of 3 examples, in order: one epoch of the 9, both sources trained and reported
    assert result.steps == 3 and [e["epoch"] for e in events] == [0.3333, 0.6667, 1.0]
    trained = {}
    for event in events:
        for source, n in event["trainable_tokens_by_source"].items():
            trained[source] = trained.get(source, 0) + n
    assert trained == {s: sum(e.trainable_tokens for e in examples if e.source == s) for s in ("new", "old")}
    assert result.summary["continual"]["replay"]["examples"] == 3


def test_the_ewc_penalty_is_a_logged_term_on_top_of_the_per_source_loss(tiny, make_context, previous):
    ctx = continual_context(tiny, make_context)
    config = ContinualConfig(previous_run=str(previous), ewc_lambda=50.0, ewc_examples=4, max_steps=2, **STEPS)
    trainer = ContinualTrainer(config)
    result, (first, second) = run(trainer, ctx)
    assert first["loss_terms"] == {"ewc": 0.0}  # the first update starts at the anchor
    assert second["loss_terms"]["ewc"] > 0
    for event in (first, second):  # one source: the logged loss is its cross-entropy plus the penalty
        assert event["loss"] == pytest.approx(event["loss_by_source"]["new"] + event["loss_terms"]["ewc"], rel=1e-5)
    assert result.summary["continual"]["ewc"]["final_penalty"] > 0


def test_adversarial_weights_perturbation_is_never_split_and_positions_are(tiny, make_context):
    """perturb = "weights" normalises one perturbation over the whole micro-batch: splitting it into passes would
    change the loss, so it is refused; per-position perturbations are per sequence and split exactly."""
    adapter, tokenizer, model = tiny
    examples = [encode(adapter, tokenizer, w) for w in WORDS[:6]]
    keys = dict(epsilon=0.5, max_steps=1, **STEPS)
    weights = AdversarialTrainer(AdversarialTrainer.Config(max_tokens_per_forward=8, **keys))
    with pytest.raises(ift.RecipeError, match="'sft-adversarial' objective couples the examples of a micro-batch"):
        run(weights, make_context(adapter, tokenizer, model.train(), examples))
    losses = []
    for budget in ("none", 8):
        torch.manual_seed(0)
        trainer = AdversarialTrainer(
            AdversarialTrainer.Config(perturb="positions", max_tokens_per_forward=budget, **keys)
        )
        ctx = make_context(adapter, tokenizer, copy.deepcopy(model).train(), examples)
        losses.append(run(trainer, ctx)[1][0]["adversarial_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
