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
    assert loss.item() == pytest.approx((1 - alpha) * ce + alpha * temperature**2 * kl, rel=1e-5)
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
    assert "trainer.teacher: the teacher's tokenizer (261 tokens) differs from the student's (260 tokens)" in str(
        err.value
    )


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


# --- what distill refuses before training --------------------------------------------------------


@pytest.mark.parametrize("adapter", ["seq2seq", "classifier"])
def test_non_causal_adapters_are_refused_by_validation(make_recipe, adapter, tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "config.json").write_text("{}")
    with pytest.raises(ift.RecipeError) as err:
        make_recipe(
            model={"adapter": adapter, "name_or_path": "some/model"}, trainer={"name": "distill", "teacher": "teacher"}
        )
    text = str(err.value)
    assert f"'distill' needs a causal language model, but model.adapter is {adapter!r}" in text
    assert text.count("causal language model") == 1
    make_recipe(trainer={"name": "distill", "teacher": "teacher"})  # causal-lm: accepted


def test_non_causal_adapter_is_refused_at_the_start_of_training(tiny, make_context, tmp_path):
    from ift.builtin_plugins.seq2seq import Seq2SeqAdapter

    adapter, tokenizer, model = tiny
    other = Seq2SeqAdapter(Seq2SeqAdapter.Config(name_or_path="some/model"), base_dir=tmp_path)
    ctx = make_context(other, tokenizer, model, [encode(adapter, tokenizer, "abc")])
    with pytest.raises(ift.RecipeError) as err:
        DistillTrainer(DistillConfig(teacher=str(tmp_path))).train(ctx)
    assert err.value.exit_code == 2 and err.value.problems[0].key == "trainer.name"
    assert "model.adapter is 'seq2seq'" in str(err.value)


def test_causal_is_a_capability_subclasses_and_declared_adapters_qualify():
    from ift.builtin_plugins.causal_lm import CausalLMAdapter
    from ift.builtin_plugins.seq2seq import Seq2SeqAdapter
    from ift.builtin_plugins.trainers.distill import is_causal

    class Mine(CausalLMAdapter):
        name = "mine"

    class Declared(Seq2SeqAdapter):
        causal = True

    assert is_causal(CausalLMAdapter) and is_causal(Mine) and is_causal(Declared)
    assert not is_causal(Seq2SeqAdapter)


def test_a_missing_local_teacher_fails_at_once(tmp_path, monkeypatch, make_recipe):
    from ift.builtin_plugins.trainers.distill import teacher_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    recipe_dir = tmp_path / "recipes"
    (recipe_dir / "runs").mkdir(parents=True)
    for spec in ("runs/quickstart", "./teacher", "../teacher", "/nowhere/teacher", "~/no-such-teacher", "a/b/c"):
        with pytest.raises(ift.RecipeError) as err:
            teacher_folder(spec, recipe_dir)
        assert err.value.problems[0].key == "trainer.teacher"
        assert f"no folder {spec!r} (looked in {recipe_dir} and {tmp_path})" in str(err.value)
    assert teacher_folder("org/model", recipe_dir) is None  # a hub id
    (tmp_path / "org").mkdir()  # ... unless its first part is a local folder
    with pytest.raises(ift.RecipeError, match="no folder 'org/model'"):
        teacher_folder("org/model", recipe_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub: nothing can be a hub id
    with pytest.raises(ift.RecipeError, match="no folder 'other/model'"):
        teacher_folder("other/model", recipe_dir)
    from huggingface_hub import constants

    cache = tmp_path / "hub"  # ... except one the hub cache holds, which loads offline
    snapshot = cache / "models--other--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--other--cached" / "refs").mkdir()
    (cache / "models--other--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert teacher_folder("other/cached", recipe_dir) is None
    # validation accepts it (an earlier step may produce it); training refuses it before loading anything
    monkeypatch.delenv("HF_HUB_OFFLINE")
    make_recipe(trainer={"name": "distill", "teacher": "runs/quickstart"})


def test_a_lora_teacher_is_merged_with_its_trained_weights_and_no_warning(tiny, make_context, tmp_path):
    import warnings

    adapter, tokenizer, model = tiny
    lora, _, wrapped = build(tmp_path / "lora", peft={"method": "lora", "r": 4, "alpha": 8})
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B is not zero any more
    lora.save(wrapped, tokenizer, tmp_path / "teacher")
    ctx = make_context(adapter, tokenizer, model, [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = with_teacher(ctx, teacher=str(tmp_path / "teacher"))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    assert not hasattr(trainer.teacher, "peft_config")  # merged into plain weights
    batch = batch_of(adapter, tokenizer)
    with torch.no_grad():
        want = wrapped.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = trainer.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
