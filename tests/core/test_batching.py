"""Batch plans: every example once per epoch, seeded; packing bins respect capacity and fill well."""

from __future__ import annotations

import random

import pytest

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
