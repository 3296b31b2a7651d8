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
from typing import Any

MODES = ("auto", "padding", "length-grouped", "padding-free", "packing")


#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = [
    "BatchPlan",
    "Passes",
    "activation_bytes_per_token",
    "checkpoints_by_default",
    "forward_token_budget",
    "length_grouped_batches",
    "pack_best_fit_decreasing",
    "random_batches",
    "shuffled",
    "split_for_passes",
]


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


class Passes(list):  # type: ignore[type-arg]
    """One micro-batch collated as several batches of whole examples (``[trainer] max_tokens_per_forward``): the
    loop runs a forward and backward pass for each and steps once for the whole micro-batch."""


def split_for_passes(lengths: Sequence[int], budget: int, padded: bool) -> list[list[int]]:
    """Positions of a micro-batch's examples grouped so that each group holds at most ``budget`` tokens: its
    longest example times its size when ``padded``, else the sum of its lengths. Longest first, so a padded
    group's examples are alike in length; an example longer than the budget is a group of its own. One group
    (in the given order) when the whole micro-batch fits."""
    cost = max(lengths, default=0) * len(lengths) if padded else sum(lengths)
    if cost <= budget:
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    group: list[int] = []
    used = first = 0
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        if group and (first * (len(group) + 1) if padded else used + n) > budget:
            groups.append(group)
            group, used = [], 0
        if not group:
            first = n
        group.append(i)
        used += n
    groups.append(group)
    return groups


def activation_bytes_per_token(model_config: Any, element_bytes: int, checkpointed: bool) -> int | None:
    """An estimate of the activation bytes a transformer keeps for backward per token of a forward pass: per
    decoder layer about 10 hidden-sized and 4 intermediate-sized values (norm inputs and outputs, q/k/v,
    attention output, gate, up, their product); with activation checkpointing one hidden state per layer plus
    one layer being recomputed. None when the config does not give the layer count and width."""
    hidden = getattr(model_config, "hidden_size", None) or getattr(model_config, "d_model", None)
    layers = getattr(model_config, "num_hidden_layers", None) or getattr(model_config, "num_layers", None)
    if not isinstance(hidden, int) or not isinstance(layers, int):
        return None
    layers += int(getattr(model_config, "num_decoder_layers", 0) or 0)
    inner = getattr(model_config, "intermediate_size", None) or getattr(model_config, "d_ff", None) or 4 * hidden
    per_layer = (10 * hidden + 4 * int(inner)) * element_bytes
    return layers * hidden * element_bytes + per_layer if checkpointed else layers * per_layer


#: What ``max_tokens_per_forward = "auto"`` lets one forward pass keep for backward on a CPU.
CPU_ACTIVATION_BUDGET = 256 * 2**20

#: The same with activation checkpointing. Its estimate counts the kept hidden states and one recomputed layer,
#: but the backward of a pass also holds that layer's activation gradients and the head's chunks, so a pass
#: peaks well above it. Measured on SmolLM2-135M, 8 x 512 tokens, 2 cores (2026-12-07, A B A B): LoRA r=16 kept
#: 1.48 / 1.48 GiB at 63 / 75 real tokens/s with 256 MiB (2,299-token passes) and 1.31 / 1.31 GiB at 68 / 68
#: with 128 MiB (1,149); full fine-tuning 3.12 / 3.12 GiB at 72 / 99 against 3.12 / 3.17 GiB at 87 / 97.
CPU_CHECKPOINTED_BUDGET = 128 * 2**20


def checkpoints_by_default(model: Any, device_type: str, element_bytes: int, max_length: int) -> bool:
    """``gradient_checkpointing = "auto"``: on a CPU, whether one ``max_length`` example would keep more than
    :data:`CPU_ACTIVATION_BUDGET` of activations, which no split at example boundaries can avoid."""
    if device_type != "cpu":
        return False
    per_token = activation_bytes_per_token(getattr(model, "config", None), element_bytes, False)
    return per_token is not None and per_token * max_length > CPU_ACTIVATION_BUDGET


def forward_token_budget(
    requested: int | str, model: Any, device_type: str, element_bytes: int, checkpointed: bool
) -> int | None:
    """The tokens one forward pass may hold (``[trainer] max_tokens_per_forward``), or None for one pass per
    micro-batch. ``auto``: on a CPU, as many as keep about :data:`CPU_ACTIVATION_BUDGET` of activations
    (:data:`CPU_CHECKPOINTED_BUDGET` with checkpointing; by :func:`activation_bytes_per_token`, at least 128);
    elsewhere (a GPU's batch size is chosen to fit its memory), none."""
    if requested == "none":
        return None
    if isinstance(requested, int):
        return requested
    if device_type != "cpu":
        return None
    per_token = activation_bytes_per_token(getattr(model, "config", None), element_bytes, checkpointed)
    budget = CPU_CHECKPOINTED_BUDGET if checkpointed else CPU_ACTIVATION_BUDGET
    return None if not per_token else max(128, budget // per_token)
