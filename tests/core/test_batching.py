"""Batch plans: every example once per epoch, seeded; packing bins respect capacity and fill well; passes of
a micro-batch and the automatic token budget per pass."""

from __future__ import annotations

import random

import pytest

import ift
from ift.batching import BatchPlan, length_grouped_batches, pack_best_fit_decreasing, random_batches


def lognormal_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [max(4, min(512, int(rng.lognormvariate(4.0, 0.7)))) for _ in range(n)]


@pytest.mark.parametrize(
    "make",
    [
        lambda lengths, e: random_batches(len(lengths), 8, 3, e),
        lambda lengths, e: length_grouped_batches(lengths, 8, 3, e),
    ],
)
def test_each_example_exactly_once_per_epoch_and_seeded(make):
    lengths = lognormal_lengths(203)
    for epoch in (0, 1):
        batches = make(lengths, epoch)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(203))
        assert make(lengths, epoch) == batches  # same seed and epoch, same batches
    assert make(lengths, 0) != make(lengths, 1)  # a new order every epoch


def test_length_grouping_cuts_padding():
    lengths = lognormal_lengths(4000)

    def padding(batches):
        slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / slots

    grouped = padding(length_grouped_batches(lengths, 16, 0, 0))
    plain = padding(random_batches(len(lengths), 16, 0, 0))
    assert plain > 0.3 and grouped < 0.05


def test_best_fit_decreasing_packs_within_capacity_and_efficiently():
    lengths = lognormal_lengths(3000)
    bins = pack_best_fit_decreasing(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(3000))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    efficiency = sum(lengths) / (1024 * len(bins))
    assert efficiency > 0.95


def test_packing_rejects_an_example_longer_than_a_bin():
    with pytest.raises(ValueError, match="example 1 has 9 tokens"):
        pack_best_fit_decreasing([3, 9], 8)


def test_batch_plan_follows_the_selected_epoch_and_skips():
    plan = BatchPlan("length-grouped", lognormal_lengths(50), 8, seed=1)
    first = list(plan)
    plan.select(1)
    assert list(plan) != first and len(plan) == 7
    second = list(plan)
    plan.select(1, skip=3)
    assert list(plan) == second[3:] and len(plan) == 7


def test_unshuffled_plan_keeps_data_order():
    plan = BatchPlan("length-grouped", [5, 1, 9, 2, 7], 2, seed=1, shuffle=False)
    assert list(plan) == [[0, 1], [2, 3], [4]]


def test_passes_are_grouped_by_length_and_an_overlong_example_runs_alone():
    from ift.batching import split_for_passes

    assert split_for_passes([5, 9, 3], 27, padded=True) == [[0, 1, 2]]  # fits: one pass, order kept
    assert split_for_passes([5, 9, 3, 8], 20, padded=True) == [[1, 3], [0, 2]]  # 9*2, then 5*2
    assert split_for_passes([5, 9, 3, 8], 20, padded=False) == [[1, 3], [0, 2]]  # 17, then 8
    assert split_for_passes([40, 2, 2], 10, padded=False) == [[0], [1, 2]]


def test_the_automatic_token_budget_follows_the_device_and_the_model_shape():
    from types import SimpleNamespace

    from ift.batching import (
        CPU_ACTIVATION_BUDGET,
        CPU_CHECKPOINTED_BUDGET,
        activation_bytes_per_token,
        checkpoints_by_default,
        forward_token_budget,
    )

    smollm2 = SimpleNamespace(config=SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30))
    per_token = 30 * (10 * 576 + 4 * 1536) * 4
    assert activation_bytes_per_token(smollm2.config, 4, False) == per_token
    assert forward_token_budget("auto", smollm2, "cpu", 4, False) == CPU_ACTIVATION_BUDGET // per_token == 187
    # checkpointed: one hidden state per layer and one layer recomputed, against half the budget (an 8 x 512
    # micro-batch runs as 4 passes of 2 examples)
    assert CPU_CHECKPOINTED_BUDGET == CPU_ACTIVATION_BUDGET // 2
    assert (
        forward_token_budget("auto", smollm2, "cpu", 4, True)
        == CPU_CHECKPOINTED_BUDGET // (30 * 576 * 4 + per_token // 30)
        == 1149
    )
    assert checkpoints_by_default(smollm2, "cpu", 4, 512)  # one 512-token example alone keeps 731 MB
    assert not checkpoints_by_default(smollm2, "cpu", 4, 128) and not checkpoints_by_default(smollm2, "cuda", 4, 512)
    assert forward_token_budget("auto", smollm2, "cuda", 4, False) is None
    assert forward_token_budget("none", smollm2, "cpu", 4, False) is None
    assert forward_token_budget(1000, smollm2, "cuda", 2, False) == 1000
    assert forward_token_budget("auto", SimpleNamespace(config=SimpleNamespace()), "cpu", 4, False) is None
    t5 = SimpleNamespace(d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6)
    assert activation_bytes_per_token(t5, 4, False) == 12 * (10 * 512 + 4 * 2048) * 4
    with pytest.raises(ValueError, match="positive number of tokens"):
        ift.TrainingConfig(max_tokens_per_forward=0)
