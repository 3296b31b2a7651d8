"""How examples are grouped into batches. Pure Python and seeded; no torch.

Modes (``[trainer] batching``):

- ``padding``: random batches, each padded to its longest example (kept for comparison).
- ``length-grouped``: random mega-batches sorted by length and cut into batches, batches shuffled, so an
  example is padded only to a similar length.
- ``padding-free``: random batches whose examples are concatenated into one row with per-example
  ``position_ids``; no padding at all, attention never crosses examples.
- ``packing``: examples packed into rows of at most ``max_length`` tokens by best-fit decreasing; a batch is
  ``batch_size`` rows.

Every mode sees every example exactly once per epoch.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence

MODES = ("auto", "padding", "length-grouped", "padding-free", "packing")


#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = ["BatchPlan", "length_grouped_batches", "pack_best_fit_decreasing", "random_batches", "shuffled"]


def shuffled(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def random_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = shuffled(n, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_factor: int = 128
) -> list[list[int]]:
    """Sort within mega-batches of ``group_factor * batch_size`` random examples, then shuffle the batches."""
    order = shuffled(len(lengths), seed, epoch)
    size = group_factor * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        group = sorted(order[start : start + size], key=lambda i: -lengths[i])
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    random.Random(seed * 7_919 + epoch).shuffle(batches)
    return batches


def pack_best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of example indices, each summing to at most ``capacity`` tokens. O(n log n): the open bins are
    kept sorted by remaining room, and each example goes to the bin with the least room that fits it."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rooms: list[tuple[int, int]] = []  # (remaining room, bin id), sorted
    bins: list[list[int]] = []
    for index in order:
        need = lengths[index]
        if need > capacity:
            raise ValueError(f"example {index} has {need} tokens, more than the bin capacity {capacity}")
        pos = bisect.bisect_left(rooms, (need, -1))
        if pos < len(rooms):
            room, bin_id = rooms.pop(pos)
        else:
            room, bin_id = capacity, len(bins)
            bins.append([])
        bins[bin_id].append(index)
        bisect.insort(rooms, (room - need, bin_id))
    return bins


class BatchPlan:
    """An epoch-aware batch sampler (a torch ``batch_sampler``): yields lists of dataset indices.

    For ``packing`` the dataset is the list of bins, so each index names a packed row."""

    def __init__(self, mode: str, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.mode, self.lengths, self.batch_size, self.seed = mode, list(lengths), batch_size, seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def select(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's order; ``skip`` batches already trained on (a resumed run) are left out.

        Deliberately not called ``set_epoch``: accelerate calls a sampler's ``set_epoch`` with its own
        iteration count, which knows nothing of resumed runs."""
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[list[int]]:
        if not self.shuffle:  # data order as given (curricula, exact comparisons with other trainers)
            n = len(self.lengths)
            return [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]
        if self.mode == "length-grouped":
            return length_grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch)
        return random_batches(len(self.lengths), self.batch_size, self.seed, self.epoch)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.skip :])

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)
