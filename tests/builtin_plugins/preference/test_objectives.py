"""The preference objectives on a tiny model: the loss at the start (DPO: ln 2 per pair, the reference being the
model itself), a few optimizer steps lowering it and raising the held-out reward accuracy, the reference under
LoRA (adapter disabled) equal to the precomputed one, and the batches (a pair never split, every pair once per
epoch, a padding-free row giving the padded rows' log-probabilities)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from ift.builtin_plugins.preference.objectives import DPOObjective, KTOObjective, ORPOObjective

from .helpers import adapter, context, encode, model, objective, pair_rows, records


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list[Any], list[Any]]:
    made, tokenizer = adapter(tmp_path_factory.mktemp("pref"))
    train = encode(made, tokenizer, records(pair_rows(8)))
    held = encode(made, tokenizer, records(pair_rows(4, offset=8)))
    return made, tokenizer, train, held


def train_steps(obj: Any, ctx: Any, net: Any, epochs: int, mode: str = "length-grouped") -> list[float]:
    loader = obj.loader(ctx, mode)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=3e-3)
    seen = []
    for epoch in range(epochs):
        loader.batch_sampler.select(epoch)
        for batch in loader:
            terms = obj.loss(net, batch)
            loss = terms.trained() / obj.units(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen.append(float(loss.detach()))
    return seen


@pytest.mark.parametrize("cls", [DPOObjective, ORPOObjective, KTOObjective])
def test_steps_lower_the_loss_and_raise_held_out_reward_accuracy(cls: Any, data: Any, tmp_path: Path) -> None:
    made, tokenizer, train, held = data
    net = model(made, tokenizer)
    obj = objective(cls)
    ctx = context(made, tokenizer, net, train, held, tmp=tmp_path)
    before = obj.start_evaluation(ctx, net)
    obj.setup(ctx, net)
    losses = train_steps(obj, ctx, net, epochs=6)
    after = obj.evaluate(net)
    assert sum(losses[-2:]) < sum(losses[:2])
    assert after["reward_accuracy"] > before["reward_accuracy"]
    assert after["reward_accuracy"] >= 0.75
    assert after["reward_margin"] > before["reward_margin"]
    assert after["chosen_logp"] - after["rejected_logp"] > before["chosen_logp"] - before["rejected_logp"]
    assert before["n"] == (8 if cls is KTOObjective else 4)  # KTO: each held-out pair is two examples


def test_dpo_starts_at_log_2_per_pair_and_reports_figures(data: Any, tmp_path: Path) -> None:
    made, tokenizer, train, held = data
    net = model(made, tokenizer)
    obj = objective(DPOObjective, beta=0.3)
    ctx = context(made, tokenizer, net, train, held, tmp=tmp_path)
    baseline = obj.start_evaluation(ctx, net)
    obj.setup(ctx, net)
    assert obj.precomputed  # full fine-tuning: computed once, no second model
    assert baseline["reward_accuracy"] == 0.0 and baseline["reward_margin"] == 0.0
    net.eval()  # the reference was computed without dropout
    batch = next(iter(obj.loader(ctx, "padding")))
    terms = obj.loss(net, batch)
    n = obj.units(batch)
    assert n == len(batch["record_ids"]) == 4
    assert terms.loss.item() == pytest.approx(n * math.log(2), abs=1e-5)
    sums, units = terms.per_example
    assert sums.sum().item() == pytest.approx(terms.loss.item()) and units.tolist() == [1] * n
    assert set(terms.figures) >= {"reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp"}
    assert all(not value.requires_grad for value in terms.figures.values())


def test_lora_reference_is_the_model_with_the_adapter_disabled(tmp_path: Path) -> None:
    made, tokenizer = adapter(tmp_path, peft={"method": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"})
    train = encode(made, tokenizer, records(pair_rows(6)))
    net = model(made, tokenizer)
    with torch.no_grad():  # move the adapter away from zero, so the policy differs from the base
        for name, param in net.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    net.eval()
    on_the_fly = objective(DPOObjective)
    ctx = context(made, tokenizer, net, train, [], tmp=tmp_path)
    on_the_fly.setup(ctx, net)
    assert not on_the_fly.precomputed
    batch = next(iter(on_the_fly.loader(ctx, "padding")))
    live = on_the_fly.reference(net, batch)
    policy = on_the_fly._logps(net, batch)
    assert not torch.allclose(live["chosen"], policy["chosen"])  # the adapter was really disabled
    base = objective(DPOObjective, reference="precomputed")
    with net.disable_adapter():
        base.setup(context(made, tokenizer, net, train, [], tmp=tmp_path), net)
    stored = base.reference(net, batch)
    assert torch.allclose(live["chosen"], stored["chosen"], atol=1e-4)
    assert torch.allclose(live["rejected"], stored["rejected"], atol=1e-4)


def test_pairs_stay_whole_in_batches_and_padding_free_rows_agree(data: Any, tmp_path: Path) -> None:
    made, tokenizer, train, _ = data
    net = model(made, tokenizer)
    net.eval()
    obj = objective(DPOObjective, batch_size=3)
    ctx = context(made, tokenizer, net, train, [], tmp=tmp_path)
    obj.setup(ctx, net)
    padded = obj.loader(ctx, "length-grouped")
    assert len(padded) == 3  # 8 pairs, 3 a batch
    seen = []
    for batch in padded:
        n = batch["pairs"]
        assert batch["input_ids"].shape[0] == 2 * n
        assert batch["row_ids"][:n] == batch["row_ids"][n:] == batch["record_ids"]
        seen += batch["record_ids"]
        assert batch["loss_tokens"] == int((batch["labels"][:, 1:] != -100).sum())
    assert sorted(seen) == sorted(e.record_id for e in train)
    padded.batch_sampler.select(1, skip=1)
    assert len(list(padded)) == 2  # a resumed epoch leaves out the batches already trained on
    for a, b in zip(obj.loader(ctx, "padding-free"), obj.loader(ctx, "padding"), strict=True):
        assert a["input_ids"].shape[0] == 1 and int(a["real_tokens"]) == a["input_ids"].numel()  # no padding
        pa, pb = obj._logps(net, a), obj._logps(net, b)
        assert a["record_ids"] == b["record_ids"]
        assert torch.allclose(pa["chosen"], pb["chosen"], atol=1e-4)
        assert torch.allclose(pa["rejected"], pb["rejected"], atol=1e-4)


def test_kto_batches_hold_mismatched_sequences_for_the_kl_estimate(data: Any, tmp_path: Path) -> None:
    made, tokenizer, train, _ = data
    obj = objective(KTOObjective)
    net = model(made, tokenizer)
    ctx = context(made, tokenizer, net, train, [], tmp=tmp_path)
    obj.setup(ctx, net)
    batch = next(iter(obj.loader(ctx, "padding")))
    assert batch["pairs"] == 4 and batch["desirable"].dtype == torch.bool
    text = tokenizer.decode(batch["kl"]["input_ids"][0][batch["kl"]["attention_mask"][0].bool()])
    prompt = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()]).split("assistant")[0]
    assert text.startswith(prompt) and text != tokenizer.decode(
        batch["input_ids"][0][batch["attention_mask"][0].bool()]
    )  # its own prompt, another completion


def test_objectives_refuse_ordinary_examples(data: Any, tmp_path: Path) -> None:
    import ift

    made, tokenizer, train, _ = data
    plain = [ift.EncodedExample(train[0].input_ids, train[0].labels, "s", "plain")]
    net = model(made, tokenizer)
    with pytest.raises(ift.DataError, match="not pairs"):
        objective(DPOObjective).setup(context(made, tokenizer, net, plain, [], tmp=tmp_path), net)
    with pytest.raises(ift.RecipeError, match="packing"):
        objective(DPOObjective).loader(context(made, tokenizer, net, train, [], tmp=tmp_path), "packing")


def test_held_out_figures_per_source_add_up_to_the_overall_ones(data: Any, tmp_path: Path) -> None:
    made, tokenizer, train, _ = data
    held = encode(
        made, tokenizer, records(pair_rows(3, offset=8), source="a") + records(pair_rows(2, offset=11), source="b")
    )
    net = model(made, tokenizer)
    obj = objective(DPOObjective, batch_size=2)
    figures = obj.start_evaluation(context(made, tokenizer, net, train, held, tmp=tmp_path), net)
    a, b = figures["per_source"]["a"], figures["per_source"]["b"]
    assert (a["n"], b["n"], figures["n"]) == (3, 2, 5)
    assert figures["chosen_logp"] == pytest.approx((3 * a["chosen_logp"] + 2 * b["chosen_logp"]) / 5, abs=1e-4)
