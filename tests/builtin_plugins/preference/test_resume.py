"""The preference trainers on ift's loop (``[trainer] name = "dpo"`` / ``"kto"``): an interrupted run resumed
from its checkpoint logs the same losses and figures, step for step, as one that ran through (the reference is the
starting model in both, and KTO's KL estimate is checkpointed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ift
from ift.host import PluginHost

from .helpers import adapter, encode, model, pair_rows, records


class Quiet:
    total = 0

    def step(self, *args: Any) -> None:
        pass

    def stage(self, name: str) -> None:
        pass

    def write(self, message: str) -> None:
        pass


def run(
    host: PluginHost,
    name: str,
    tmp_path: Path,
    run_dir: Path,
    *,
    resume_from: Path | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    made, tokenizer = adapter(tmp_path)
    examples = encode(made, tokenizer, records(pair_rows(8)))
    net = model(made, tokenizer)
    events: list[dict[str, Any]] = []
    cls = host.get("trainer", name).cls
    trainer = cls(
        cls.Config(
            batch_size=2,
            max_steps=6,
            save_every=2,
            log_every=1,
            learning_rate=5e-3,
            batching="length-grouped",
            beta=0.5,
        )
    )
    ctx = ift.TrainContext(
        model=net.train(),
        tokenizer=tokenizer,
        adapter=made,
        train_examples=examples,
        eval_examples=[],
        seed=1,
        run_dir=run_dir,
        log_step=events.append,
        evaluate=lambda m, stage: {},
        progress=Quiet(),  # type: ignore[arg-type]
        checkpoint_dir=run_dir / "checkpoints",
        resume_from=resume_from,
        should_stop=lambda: stop_after is not None and bool(events) and events[-1]["step"] >= stop_after,
    )
    trainer.train(ctx)
    return events


@pytest.mark.parametrize("name", ["dpo", "kto"])
def test_a_resumed_preference_run_repeats_the_uninterrupted_one(name: str, host: PluginHost, tmp_path: Path) -> None:
    through = run(host, name, tmp_path, tmp_path / "through")
    with pytest.raises(ift.Preempted):
        run(host, name, tmp_path, tmp_path / "cut", stop_after=2)
    resumed = run(
        host, name, tmp_path, tmp_path / "cut", resume_from=tmp_path / "cut" / "checkpoints" / "step-00000002"
    )
    assert [e["step"] for e in resumed] == [3, 4, 5, 6]
    keys = ["loss", "reward_accuracy", "kl" if name == "kto" else "reward_margin"]
    assert [[e[k] for k in keys] for e in resumed] == [[e[k] for k in keys] for e in through[2:]]
    if name == "dpo":  # (KTO's loss can rise early on, as its KL reference point grows from 0)
        assert through[-1]["loss"] < through[0]["loss"]
