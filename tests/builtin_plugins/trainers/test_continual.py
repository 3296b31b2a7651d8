"""continual: the EWC penalty (zero at the old weights, a hand-computed value after a known change), the Fisher
estimated on the previous run's records, a seeded replay that keeps source names, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ift
from ift.builtin_plugins.renderers import AlpacaRenderer
from ift.builtin_plugins.trainers.continual import (
    ContinualConfig,
    ContinualTrainer,
    interleave,
    read_records,
    replay_sample,
)

from .helpers import WORDS, encode, manual_loss

OLD_WORDS = ["ant", "bee", "cow", "elk", "fox", "gnu", "hen", "jay", "koi", "yak"]


def old_record(word: str, i: int) -> ift.InstructionRecord:
    return ift.InstructionRecord(
        id=f"old.jsonl:{i}",
        source="old",
        task="reverse",
        messages=[ift.Message("user", f"Reverse {word}"), ift.Message("assistant", word[::-1])],
    )


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """A previous run's directory: data/train.jsonl and data/eval.jsonl as a run writes them."""
    run = tmp_path / "task-a"
    (run / "data").mkdir(parents=True)
    records = [old_record(w, i) for i, w in enumerate(OLD_WORDS)]
    (run / "data" / "train.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records[:8]))
    (run / "data" / "eval.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records[8:]))
    return run


@pytest.fixture
def setup(tiny, make_context):
    adapter, tokenizer, model = tiny
    renderer = AlpacaRenderer(AlpacaRenderer.Config(), base_dir=Path("."))
    renderer.bind(tokenizer)
    encoded: list[list[ift.InstructionRecord]] = []

    def encode_records(records):
        encoded.append(list(records))
        return [adapter.encode_record(tokenizer, r, renderer.render(r)) for r in records]

    evaluations: list[tuple[str, list[str]]] = []

    def evaluate_records(m, records, stage):
        evaluations.append((stage, [r.id for r in records]))
        return {"overall": {"loss": 2.0 if stage.endswith("before") else 2.5, "n": len(records)}}

    new = [encode(adapter, tokenizer, w, source="new") for w in WORDS[:6]]
    ctx = make_context(adapter, tokenizer, model, new, encode_records=encode_records, evaluate_records=evaluate_records)
    return ctx, encoded, evaluations


def test_ewc_penalty_is_zero_at_the_old_weights_and_matches_a_hand_computation(setup, previous):
    ctx, _, _ = setup
    trainer = ContinualTrainer(ContinualConfig(previous_run=str(previous), ewc_lambda=3.0, ewc_examples=4))
    ctx, report = trainer.prepare(ctx)
    assert report["ewc"]["fisher_examples"] == 4 and report["ewc"]["fisher_sum"] > 0
    assert trainer.ewc_penalty().item() == 0.0
    batch = ctx.adapter.collate(ctx.tokenizer, ctx.train_examples[:3])
    loss, _ = trainer.loss(ctx, ctx.model, batch)
    assert loss.item() == pytest.approx(ctx.adapter.loss_sum(ctx.model, batch)[0].item(), rel=1e-6)

    (p1, f1, a1), (p2, f2, a2) = trainer.ewc[0], trainer.ewc[3]
    with torch.no_grad():
        p1.view(-1)[5] += 0.25
        p2 += 0.125
    d1 = p1.view(-1)[5].double().item() - a1.view(-1)[5].double().item()
    expected = (
        3.0
        / 2
        * (f1.view(-1)[5].double().item() * d1**2 + (f2.double() * (p2.double() - a2.double()) ** 2).sum().item())
    )
    assert expected > 0
    assert trainer.ewc_penalty().item() == pytest.approx(expected, rel=1e-5)
    loss, count = trainer.loss(ctx, ctx.model, batch)
    plain, _ = ctx.adapter.loss_sum(ctx.model, batch)
    assert loss.item() == pytest.approx(plain.item() + expected * int(batch["loss_tokens"]), rel=1e-5)


def test_fisher_is_estimated_on_the_previous_runs_records(setup, previous):
    ctx, encoded, _ = setup
    trainer = ContinualTrainer(ContinualConfig(previous_run=str(previous), ewc_lambda=1.0, ewc_examples=5))
    trainer.prepare(ctx)
    (records,) = encoded  # no replay asked: the only records encoded are the Fisher's
    old_ids = {json.loads(line)["id"] for line in (previous / "data" / "train.jsonl").read_text().splitlines()}
    assert len(records) == 5 and {r.id for r in records} <= old_ids and {r.source for r in records} == {"old"}

    # by hand: mean over the examples of the squared gradient of each one's per-token mean loss
    model = ctx.model
    by_hand = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for example in ctx.encode_records(records):
        batch = ctx.adapter.collate(ctx.tokenizer, [example])
        model.zero_grad()
        (manual_loss(model, batch) / int(batch["loss_tokens"])).backward()
        for name, param in model.named_parameters():
            by_hand[name] += param.grad**2 / 5
    model.zero_grad()
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(trainer.ewc) == len(by_hand)
    for param, fisher, anchor in trainer.ewc:
        assert torch.allclose(fisher, by_hand[names[id(param)]].float(), rtol=1e-4, atol=1e-10)
        assert torch.equal(anchor, param)


def test_replay_adds_a_seeded_sample_that_keeps_its_source(setup, previous):
    ctx, _, _ = setup
    new_ids = [e.record_id for e in ctx.train_examples]
    trainer = ContinualTrainer(ContinualConfig(previous_run=str(previous), replay_examples=3))
    replayed_ctx, report = trainer.prepare(ctx)
    again, _ = ContinualTrainer(ContinualConfig(previous_run=str(previous), replay_examples=3)).prepare(ctx)
    examples = replayed_ctx.train_examples
    assert len(examples) == 6 + 3 and report["replay"] == {
        "records": 3,
        "examples": 3,
        "dropped_in_eval_split": 0,
        "of_previous_train_records": 8,
        "by_source": {"old": 3},
    }
    old = [e for e in examples if e.source == "old"]
    assert len(old) == 3 and all(e.record_id.startswith("old.jsonl:") for e in old)
    assert [e.record_id for e in examples] == [e.record_id for e in again.train_examples]  # stable
    assert [e.record_id for e in examples if e.source == "new"] == new_ids
    assert examples[-1].source == "new"  # spread through the new examples, not appended
    assert ctx.train_examples is not examples and len(ctx.train_examples) == 6  # the caller's list untouched

    half, report = ContinualTrainer(ContinualConfig(previous_run=str(previous), replay_fraction=0.5)).prepare(ctx)
    assert report["replay"]["records"] == 4 and len(half.train_examples) == 10


def test_replay_sample_is_seeded_and_nested():
    records = [old_record(f"w{i}", i) for i in range(40)]
    small = replay_sample(records, fraction=None, count=5, seed=1)
    large = replay_sample(records, fraction=None, count=12, seed=1)
    assert small == replay_sample(records, fraction=None, count=5, seed=1)
    assert {r.id for r in small} < {r.id for r in large}
    assert [r.id for r in small] == sorted((r.id for r in small), key=lambda i: int(i.split(":")[1]))
    assert small != replay_sample(records, fraction=None, count=5, seed=2)
    assert len(replay_sample(records, fraction=0.25, count=None, seed=1)) == 10
    assert len(replay_sample(records, fraction=None, count=99, seed=1)) == 40
    assert interleave([1, 2, 3, 4], ["a", "b"]) == [1, "a", 2, 3, "b", 4]


def test_previous_tasks_are_evaluated_before_and_after(setup, previous):
    ctx, _, evaluations = setup
    trainer = ContinualTrainer(
        ContinualConfig(previous_run=str(previous), replay_examples=2, max_steps=1, batch_size=4, batching="padding")
    )
    result = trainer.train(ctx)
    report = result.summary["continual"]
    assert [stage for stage, _ in evaluations] == ["previous-tasks-before", "previous-tasks-after"]
    assert evaluations[0][1] == ["old.jsonl:8", "old.jsonl:9"]  # data/eval.jsonl of the previous run
    assert report["previous_tasks"]["change"] == {"loss": 0.5}
    assert any("model.name_or_path is unset" in w for w in report["warnings"])
    assert any("model.name_or_path is unset" in line for line in ctx.progress.lines)
    assert "[training]" in ctx.progress.lines  # the display goes back to training after the evaluation


def test_errors_name_the_key(setup, previous, tmp_path, make_recipe):
    ctx, _, _ = setup
    for target, message in (
        (tmp_path / "nowhere", f"trainer.previous_run: no folder '{tmp_path / 'nowhere'}' (looked in {tmp_path})"),
        (tmp_path, "has no data/ folder"),
    ):
        with pytest.raises(ift.RecipeError) as err:
            ContinualTrainer(ContinualConfig(previous_run=str(target))).prepare(ctx)
        assert message in str(err.value) and "trainer.previous_run" in str(err.value)
    (previous / "data" / "train.jsonl").unlink()
    with pytest.raises(ift.RecipeError, match=r"trainer.previous_run: .* has no data/train.jsonl"):
        ContinualTrainer(ContinualConfig(previous_run=str(previous))).prepare(ctx)

    with pytest.raises(ift.RecipeError) as err:
        make_recipe(
            trainer={"name": "continual", "previous_run": str(previous), "replay_fraction": 0.1, "replay_examples": 3}
        )
    assert "set trainer.replay_fraction or trainer.replay_examples, not both" in str(err.value)
    with pytest.raises(ift.RecipeError) as err:
        make_recipe(trainer={"name": "continual", "ewc_examples": 3})
    assert "trainer.previous_run: required key is missing" in str(err.value)


def test_malformed_record_rows_name_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(old_record("ant", 0).to_dict()) + "\n" + '{"id": "x", "source": "s"}\n')
    with pytest.raises(ift.DataError, match=rf"{path}:2: not an InstructionRecord row \(KeyError"):
        read_records(path)
    path.write_text(json.dumps(old_record("ant", 0).to_dict()) + "\n")
    (record,) = read_records(path)
    assert record.to_dict() == old_record("ant", 0).to_dict()


def test_replayed_records_equal_to_this_runs_eval_records_are_not_replayed(setup, previous):
    import dataclasses

    ctx, encoded, _ = setup
    # this run's eval split holds, under other ids and another source, the content of two old training records
    held = [
        dataclasses.replace(old_record("bee", 1), id="new.jsonl:40", source="new"),
        dataclasses.replace(old_record("hen", 6), id="new.jsonl:41", source="new", metadata={"x": 1}),
        dataclasses.replace(old_record("zzz", 99), source="new"),
    ]  # content no old record has
    ctx = dataclasses.replace(ctx, eval_records=held)
    replayed_ctx, report = ContinualTrainer(ContinualConfig(previous_run=str(previous), replay_examples=8)).prepare(ctx)
    assert report["replay"]["dropped_in_eval_split"] == 2
    assert report["replay"]["records"] == report["replay"]["examples"] == 6
    old_ids = [e.record_id for e in replayed_ctx.train_examples if e.source == "old"]
    assert sorted(old_ids) == sorted(f"old.jsonl:{i}" for i in (0, 2, 3, 4, 5, 7))
    assert [r.id for r in encoded[-1]] == sorted(old_ids, key=lambda rid: int(rid.split(":")[1]))
    assert any(
        "2 sampled previous-run record(s) equal records of this run's eval split" in line for line in ctx.progress.lines
    )


def test_a_missing_previous_run_names_both_places_looked_in(setup, make_recipe, tmp_path, monkeypatch):
    ctx, encoded, _ = setup
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    recipe = make_recipe(trainer={"name": "continual", "previous_run": "runs/quickstart"})  # made by an earlier step
    trainer = ContinualTrainer(recipe.trainer.config)
    with pytest.raises(ift.RecipeError) as err:
        trainer.prepare(ctx)
    assert str(err.value) == (
        f"invalid recipe: trainer.previous_run: no folder 'runs/quickstart' (looked in "
        f"{ctx.adapter.base_dir.resolve()} and {tmp_path / 'cwd'})"
    )
    assert encoded == []  # refused before anything was encoded
