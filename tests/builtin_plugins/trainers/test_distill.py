"""distill: the KL term vanishes when the teacher is the student, the loss matches a hand computation, and a
teacher with another vocabulary is refused naming trainer.teacher."""

from __future__ import annotations

import pytest
import torch

import ift
from ift.builtin_plugins.trainers.distill import DistillConfig, DistillTrainer

from .helpers import WORDS, build, encode, manual_loss


def batch_of(adapter, tokenizer):
    return adapter.collate(tokenizer, [encode(adapter, tokenizer, w) for w in WORDS[:4]])


def with_teacher(ctx, **config):
    trainer = DistillTrainer(DistillConfig(**config))
    trainer.teacher = trainer.load_teacher(ctx)
    return trainer


def test_kl_is_zero_when_the_teacher_is_the_student(tiny, make_context, tmp_path):
    adapter, tokenizer, model = tiny
    adapter.save(model, tokenizer, tmp_path / "initial")
    ctx = make_context(adapter, tokenizer, model, [])
    trainer = with_teacher(ctx, teacher=str(tmp_path / "initial"), alpha=0.4, temperature=3.0)
    assert not trainer.teacher.training and not any(p.requires_grad for p in trainer.teacher.parameters())
    batch = batch_of(adapter, tokenizer)
    ce, kl, count = trainer.terms(model, batch)
    ce, kl = ce.sum(), kl.sum()
    assert abs(kl.item()) < 1e-6 and int(count) == int(batch["loss_tokens"])
    assert ce.item() == pytest.approx(manual_loss(model, batch).item(), rel=1e-5)
    loss, _ = trainer.loss(ctx, model, batch)
    assert loss.item() == pytest.approx(0.6 * ce.item(), rel=1e-5)


def test_loss_matches_a_hand_computation(tiny, make_context, tmp_path):
    adapter, tokenizer, model = tiny
    _, _, other = build(tmp_path, seed=1)
    adapter.save(other, tokenizer, tmp_path / "teacher")
    ctx = make_context(adapter, tokenizer, model, [])
    alpha, temperature = 0.7, 2.0
    trainer = with_teacher(ctx, teacher=str(tmp_path / "teacher"), alpha=alpha, temperature=temperature)
    batch = batch_of(adapter, tokenizer)
    loss, count = trainer.loss(ctx, model, batch)

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        student = model(**inputs).logits[:, :-1].double()
        teacher = other.eval()(**inputs).logits[:, :-1].double()
    keep = batch["labels"][:, 1:] != -100
    kl = 0.0
    for s, t in zip(student[keep], teacher[keep], strict=True):
        p = torch.softmax(t / temperature, -1)
        kl += float((p * (p.log() - torch.log_softmax(s / temperature, -1))).sum())
    ce = manual_loss(model, batch).item()
    assert kl > 0.01
    assert loss.item() == pytest.approx((1 - alpha) * ce + alpha * temperature ** 2 * kl, rel=1e-5)
    assert int(count) == int(keep.sum())
    loss.backward()
    assert all(p.grad is None for p in trainer.teacher.parameters())


def test_teacher_with_another_vocabulary_is_refused(tiny, make_context, tmp_path):
    adapter, tokenizer, model = tiny
    wide = build(tmp_path, from_config={**adapter.config.from_config, "vocab_size": 300})[2]
    wide.save_pretrained(tmp_path / "wide")  # no tokenizer saved: only the output size can be compared
    ctx = make_context(adapter, tokenizer, model, [])
    with pytest.raises(ift.RecipeError) as err:
        with_teacher(ctx, teacher=str(tmp_path / "wide"))
    assert "trainer.teacher: the teacher predicts 300 tokens, the student 260" in str(err.value)

    other_tokenizer = adapter.load_tokenizer()
    other_tokenizer.add_tokens(["<|tool|>"])
    adapter.save(model, other_tokenizer, tmp_path / "retokenized")
    with pytest.raises(ift.RecipeError) as err:
        with_teacher(ctx, teacher=str(tmp_path / "retokenized"))
    assert "trainer.teacher: the teacher's tokenizer (261 tokens) differs from the student's (260 tokens)" \
        in str(err.value)


def test_teacher_names_a_run_directory_or_fails_clearly(tiny, make_context, tmp_path):
    adapter, tokenizer, model = tiny
    adapter.save(model, tokenizer, tmp_path / "run" / "model")
    ctx = make_context(adapter, tokenizer, model, [])
    trainer = with_teacher(ctx, teacher=str(tmp_path / "run"))
    assert trainer.teacher_path == str(tmp_path / "run" / "model")
    (tmp_path / "empty").mkdir()
    for spec, message in ((str(tmp_path / "empty"), "is neither a model folder"), ("./missing", "no folder")):
        with pytest.raises(ift.RecipeError) as err:
            with_teacher(ctx, teacher=spec)
        assert str(err.value).count("trainer.teacher") == 1 and message in str(err.value)


def test_packed_rows_give_the_padded_loss_with_a_breakdown_per_example(tiny, make_context, tmp_path):
    adapter, tokenizer, model = tiny
    _, _, other = build(tmp_path, seed=2)
    adapter.save(other, tokenizer, tmp_path / "teacher")
    ctx = make_context(adapter, tokenizer, model, [])
    trainer = with_teacher(ctx, teacher=str(tmp_path / "teacher"), alpha=0.5, temperature=1.5)
    examples = [encode(adapter, tokenizer, w) for w in WORDS[:4]]
    padded, _ = trainer.loss(ctx, model, adapter.collate(tokenizer, examples))
    packed_batch = adapter.collate_packed(tokenizer, [examples[:3], examples[3:]])
    packed, count = trainer.loss(ctx, model, packed_batch)
    assert packed.item() == pytest.approx(padded.item(), rel=1e-5)
    assert int(count) == sum(e.trainable_tokens for e in examples)  # every answer token, in both layouts
    owners = trainer._owners(packed_batch)
    assert owners.tolist() == sorted(owners.tolist()) and set(owners.tolist()) == {0, 1, 2, 3}
