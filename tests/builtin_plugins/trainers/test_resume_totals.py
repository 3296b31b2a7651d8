"""sft-adversarial and distill keep their running loss totals in the checkpoint: a run interrupted and resumed
reports the same ``train.adversarial`` / ``train.distill`` means as one that was never interrupted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.trainers.adversarial import AdversarialConfig, AdversarialTrainer
from ift.builtin_plugins.trainers.distill import DistillConfig, DistillTrainer

from .helpers import WORDS, Recorder, build, encode

SETTINGS = {
    "batch_size": 2,
    "max_steps": 4,
    "save_every": 2,
    "log_every": 100,
    "shuffle": False,
    "batching": "padding",
    "learning_rate": 5e-3,
}


def train(
    trainer: ift.SFTTrainer,
    tmp_path: Path,
    run_dir: Path,
    *,
    resume_from: Path | None = None,
    stop_after: int | None = None,
) -> ift.TrainResult:
    adapter, tokenizer, model = build(tmp_path, seed=0)
    events: list[dict[str, Any]] = []
    ctx = ift.TrainContext(
        model=model.train(),
        tokenizer=tokenizer,
        adapter=adapter,
        train_examples=[encode(adapter, tokenizer, w) for w in WORDS[:8]],
        eval_examples=[],
        seed=0,
        run_dir=run_dir,
        log_step=events.append,
        evaluate=lambda m, stage: {},
        progress=Recorder(),
        checkpoint_dir=run_dir / "checkpoints",
        resume_from=resume_from,
        should_stop=lambda: stop_after is not None and bool(events) and events[-1]["step"] >= stop_after,
    )
    return trainer.train(ctx)


def interrupted_then_resumed(make: Any, tmp_path: Path) -> tuple[ift.TrainResult, ift.TrainResult, dict[str, Any]]:
    reference = train(make(log_every=1), tmp_path, tmp_path / "reference")
    run_dir = tmp_path / "interrupted"
    with pytest.raises(ift.Preempted):
        train(make(log_every=1), tmp_path, run_dir, stop_after=2)
    checkpoint = run_dir / "checkpoints" / "step-00000002"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    resumed = train(make(log_every=1), tmp_path, run_dir, resume_from=checkpoint)
    return reference, resumed, state["position"]


def test_adversarial_means_cover_every_step_after_a_resume(tmp_path: Path):
    def make(**extra: Any) -> AdversarialTrainer:
        return AdversarialTrainer(AdversarialConfig(**{**SETTINGS, **extra}, epsilon=0.5))

    reference, resumed, position = interrupted_then_resumed(make, tmp_path)
    clean, adversarial, tokens = position["trainer"]["totals"]
    assert tokens > 0 and clean > 0 and adversarial > clean  # two steps' sums, the attack raises the loss
    assert resumed.steps == reference.steps == 4
    for key in ("clean_loss", "adversarial_loss"):
        assert resumed.summary["adversarial"][key] == pytest.approx(reference.summary["adversarial"][key], rel=1e-6)
    assert resumed.summary["adversarial"]["clean_loss"] != pytest.approx(clean / tokens, rel=1e-3)  # not 2 steps


def test_distill_means_cover_every_step_after_a_resume(tmp_path: Path):
    adapter, tokenizer, teacher = build(tmp_path / "teacher-src", seed=5)
    adapter.save(teacher, tokenizer, tmp_path / "teacher")

    def make(**extra: Any) -> DistillTrainer:
        return DistillTrainer(DistillConfig(**{**SETTINGS, **extra}, teacher=str(tmp_path / "teacher")))

    reference, resumed, position = interrupted_then_resumed(make, tmp_path)
    ce, kl, tokens = position["trainer"]["totals"]
    assert tokens > 0 and ce > 0 and kl > 0
    for key in ("ce_loss", "kl"):
        assert resumed.summary["distill"][key] == pytest.approx(reference.summary["distill"][key], rel=1e-6)
    assert resumed.summary["distill"]["kl"] != pytest.approx(kl / tokens, rel=1e-3)


def test_a_trainer_without_state_adds_nothing_to_the_checkpoint(tmp_path: Path):
    with pytest.raises(ift.Preempted):
        train(ift.SFTTrainer(ift.SFTConfig(**SETTINGS)), tmp_path, tmp_path / "run", stop_after=2)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert "trainer" not in state["position"] and set(state["position"]) >= {"loop", "meter"}
