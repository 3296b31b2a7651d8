"""sft-adversarial: the perturbation is FGM/PGD on the embedding matrix (checked against an in-place edit of a
copy's weights), the weights come back bit-exactly, and epsilon = 0 is plain sft."""

from __future__ import annotations

import copy

import pytest
import torch

import ift
from ift.builtin_plugins.trainers.adversarial import AdversarialConfig, AdversarialTrainer

from .helpers import WORDS, build, encode, manual_loss


def batch_of(adapter, tokenizer, words=WORDS[:3]):
    return adapter.collate(tokenizer, [encode(adapter, tokenizer, w) for w in words])


def embedding_outputs(model):
    """Records every output of the input embedding layer; returns the list and the hook handle."""
    seen: list[torch.Tensor] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    return seen, handle


def fgm_by_hand(model, batch, epsilon):
    """Clean and adversarial summed losses the textbook way: backward, edit a copy's embedding matrix in place
    by epsilon * g / ||g||, forward again."""
    clean_model = copy.deepcopy(model)
    clean = manual_loss(clean_model, batch)
    clean.backward()
    grad = clean_model.get_input_embeddings().weight.grad
    attacked = copy.deepcopy(model)
    with torch.no_grad():
        attacked.get_input_embeddings().weight.add_(epsilon * grad / grad.norm())
    return clean.item(), manual_loss(attacked, batch).item(), epsilon * grad / grad.norm()


def test_fgm_perturbs_embedding_rows_during_the_adversarial_pass_and_restores_weights(tiny, make_context):
    adapter, tokenizer, model = tiny
    batch = batch_of(adapter, tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen, handle = embedding_outputs(model)
    trainer = AdversarialTrainer(AdversarialConfig(epsilon=0.5))
    loss, count = trainer.loss(make_context(adapter, tokenizer, model, []), model, batch)
    loss.backward()
    handle.remove()

    assert len(seen) == 2  # the clean pass, then the adversarial one
    delta = seen[1] - seen[0]
    ids = batch["input_ids"]
    _, _, expected = fgm_by_hand(model, batch, 0.5)
    rows = []
    for token in ids.unique():
        at_token = delta[ids == token]
        assert torch.allclose(at_token, at_token[0].expand_as(at_token), atol=1e-6)  # one vector per row
        assert torch.allclose(at_token[0], expected[token], atol=1e-6)
        rows.append(at_token[0])
    assert torch.stack(rows).norm().item() == pytest.approx(0.5, rel=1e-4)

    assert int(count) == int(batch["loss_tokens"])
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert not model.get_input_embeddings()._forward_hooks
    assert torch.equal(model.get_input_embeddings()(ids), seen[0])  # the clean pass saw the true embeddings


def test_loss_is_weighted_clean_plus_adversarial(tiny, make_context):
    adapter, tokenizer, model = tiny
    batch = batch_of(adapter, tokenizer)
    clean, adversarial, _ = fgm_by_hand(model, batch, 0.8)
    trainer = AdversarialTrainer(AdversarialConfig(epsilon=0.8, adversarial_weight=0.3))
    loss, _ = trainer.loss(make_context(adapter, tokenizer, model, []), model, batch)
    assert adversarial > clean  # a step along the gradient raises the loss
    assert loss.item() == pytest.approx(0.7 * clean + 0.3 * adversarial, rel=1e-5)


def test_epsilon_zero_gives_the_plain_sft_gradient(tiny, make_context):
    adapter, tokenizer, model = tiny
    batch = batch_of(adapter, tokenizer)
    loss, _ = adapter.loss_sum(model, batch)
    plain = torch.autograd.grad(loss, list(model.parameters()))
    trainer = AdversarialTrainer(AdversarialConfig(epsilon=0.0))
    loss, _ = trainer.loss(make_context(adapter, tokenizer, model, []), model, batch)
    adversarial = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(plain, adversarial, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


def test_positions_perturb_each_sequence_by_epsilon(tiny, make_context):
    adapter, tokenizer, model = tiny
    batch = batch_of(adapter, tokenizer)
    seen, handle = embedding_outputs(model)
    trainer = AdversarialTrainer(AdversarialConfig(epsilon=0.25, perturb="positions"))
    trainer.loss(make_context(adapter, tokenizer, model, []), model, batch)
    handle.remove()
    norms = (seen[1] - seen[0]).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 0.25), rtol=1e-4)


def test_pgd_stays_in_the_ball_and_one_full_step_is_fgm(tiny, make_context):
    adapter, tokenizer, model = tiny
    batch = batch_of(adapter, tokenizer)
    ctx = make_context(adapter, tokenizer, model, [])
    seen, handle = embedding_outputs(model)
    AdversarialTrainer(AdversarialConfig(epsilon=0.5, attack="pgd", pgd_steps=4, pgd_alpha=0.3)).loss(ctx, model, batch)
    handle.remove()
    assert len(seen) == 5  # clean (also PGD's first gradient), three more gradient steps, the final pass
    for attacked in seen[1:]:
        ids = batch["input_ids"]
        rows = torch.stack([(attacked - seen[0])[ids == t][0] for t in ids.unique()])
        assert rows.norm().item() <= 0.5 * (1 + 1e-4)
    fgm, _ = AdversarialTrainer(AdversarialConfig(epsilon=0.5)).loss(ctx, model, batch)
    pgd, _ = AdversarialTrainer(AdversarialConfig(epsilon=0.5, attack="pgd", pgd_steps=1, pgd_alpha=0.5)).loss(
        ctx, model, batch
    )
    assert pgd.item() == pytest.approx(fgm.item(), rel=1e-6)


def test_lora_frozen_embeddings_are_attacked_and_only_adapters_learn(tmp_path, make_context):
    adapter, tokenizer, model = build(tmp_path, peft={"method": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]})
    model.eval()
    embedding = model.get_input_embeddings()
    assert not embedding.weight.requires_grad
    batch = batch_of(adapter, tokenizer)
    weight = embedding.weight.detach().clone()
    seen, handle = embedding_outputs(model)
    loss, _ = AdversarialTrainer(AdversarialConfig(epsilon=0.5)).loss(
        make_context(adapter, tokenizer, model, []), model, batch
    )
    handle.remove()
    clean, _ = adapter.loss_sum(model, batch)
    loss.backward()
    assert (seen[1] - seen[0]).abs().max() > 0
    assert loss.item() > clean.item()  # 0.5 * clean + 0.5 * adversarial, the adversarial part larger
    assert torch.equal(embedding.weight, weight) and embedding.weight.grad is None
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for p in lora)
    assert any(p.grad.abs().sum() > 0 for p in lora)


def test_under_bf16_autocast(tiny, make_context):
    adapter, tokenizer, model = tiny
    batch = batch_of(adapter, tokenizer)
    before = model.get_input_embeddings().weight.detach().clone()
    seen, handle = embedding_outputs(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = AdversarialTrainer(AdversarialConfig(epsilon=0.5)).loss(
            make_context(adapter, tokenizer, model, []), model, batch
        )
    handle.remove()
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ids = batch["input_ids"]
    rows = torch.stack([(seen[1] - seen[0])[ids == t][0] for t in ids.unique()])
    assert rows.norm().item() == pytest.approx(0.5, rel=1e-3)
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_training_with_gradient_accumulation(tiny, make_context):
    adapter, tokenizer, model = tiny
    examples = [encode(adapter, tokenizer, w) for w in WORDS[:8]]
    events: list[dict] = []
    ctx = make_context(adapter, tokenizer, model.train(), examples)
    ctx.log_step = events.append
    # (bf16 autocast through the trainer's precision key would fix accelerate's process-wide state for
    # the rest of the test session; autocast itself is covered above)
    trainer = AdversarialTrainer(
        AdversarialConfig(
            epsilon=1.0, batch_size=2, gradient_accumulation_steps=2, max_steps=2, batching="padding", log_every=1
        )
    )
    result = trainer.train(ctx)
    report = result.summary["adversarial"]
    assert [e["step"] for e in events] == [1, 2] and all(e["loss"] > 0 for e in events)
    assert events[-1]["loss_by_source"]["s"] == pytest.approx(events[-1]["loss"], rel=1e-4)
    assert report["adversarial_loss"] > report["clean_loss"] > 0
    assert report["attack"] == "fgm" and report["epsilon"] == 1.0
    assert not model.get_input_embeddings()._forward_hooks


def test_pgd_keys_without_pgd_name_the_key(make_recipe):
    with pytest.raises(ift.RecipeError) as err:
        make_recipe(trainer={"name": "sft-adversarial", "pgd_steps": 2})
    assert "trainer.pgd_steps only applies with trainer.attack = 'pgd'" in str(err.value)
    recipe = make_recipe(trainer={"name": "sft-adversarial", "attack": "pgd", "pgd_steps": 2, "epsilon": 0.1})
    assert recipe.trainer_config.step_size == pytest.approx(0.125)


def test_packed_rows_are_attacked_like_padded_batches(tiny, make_context):
    adapter, tokenizer, model = tiny
    examples = [encode(adapter, tokenizer, w) for w in WORDS[:4]]
    packed = adapter.collate_packed(tokenizer, [examples[:2], examples[2:]])
    assert "attention_mask" not in packed
    seen, handle = embedding_outputs(model)
    loss, count = AdversarialTrainer(AdversarialConfig(epsilon=0.25, perturb="positions")).loss(
        make_context(adapter, tokenizer, model, []), model, packed
    )
    handle.remove()
    norms = (seen[1] - seen[0]).flatten(1).norm(dim=1)  # one packed row is one sequence here
    assert torch.allclose(norms, torch.full_like(norms, 0.25), rtol=1e-4)
    assert torch.isfinite(loss) and int(count) == int(packed["loss_tokens"])
