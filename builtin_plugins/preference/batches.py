"""Batches of preference examples.

A pair's chosen and rejected sequences always travel in the same micro-batch: rows ``0..n-1`` hold the chosen
sequences and ``n..2n-1`` the rejected ones (``padding`` and ``length-grouped``: each row padded to the batch's
longest sequence), or the whole micro-batch is one packed row, each pair's two sequences side by side, every
sequence with positions of its own (``padding-free``: no padding at all, attention never crosses from one
sequence to another).
``chosen_rows`` and ``rejected_rows`` say which sequence is where. Length grouping sorts by the pair's padded
width (its longer sequence), or by its packed length.

Unpaired (KTO) batches hold ``n`` completions, and a second batch ``kl`` of ``n`` mismatched sequences (each
example's prompt with another example's completion) for the reference point; pairs given to KTO count as one
desirable and one undesirable example.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ift
from ift import examples as tables
from ift.batching import BatchPlan

MODES = ("padding", "length-grouped", "padding-free")


@dataclass(frozen=True)
class Item:
    """One unit of loss: a pair (``part`` None), or one completion judged ``desirable`` (``part``: which sequence
    of the example it is, ``"chosen"`` or ``"rejected"`` for a pair split in two)."""

    index: int
    part: str | None = None
    desirable: bool | None = None


def pair_items(examples: Sequence[ift.EncodedExample], objective: str) -> list[Item]:
    """The pairs of ``examples``; any example that is not a pair is an error naming it."""
    kinds = tables.kinds(examples)
    bad = [i for i, kind in enumerate(kinds) if kind != "pair"]
    if bad:
        raise ift.DataError(
            f"{objective} trains on preference pairs (chosen + rejected), but {len(bad)} example(s) "
            f"are not pairs (the first: {_record_id(examples, bad[0])!r}, a {kinds[bad[0]]} "
            "example); kto trains on unpaired examples"
        )
    return [Item(i) for i in range(len(kinds))]


def unpaired_items(examples: Sequence[ift.EncodedExample], objective: str) -> list[Item]:
    """Each unpaired example once, each pair as a desirable (chosen) and an undesirable (rejected) example."""
    items = []
    for i, kind in enumerate(tables.kinds(examples)):
        if kind == "pair":
            items += [Item(i, "chosen", True), Item(i, "rejected", False)]
        elif kind in ("desirable", "undesirable"):
            items.append(Item(i, "single", kind == "desirable"))
        else:
            raise ift.DataError(
                f"{objective} trains on preference examples, but {_record_id(examples, i)!r} is an "
                "ordinary sequence (give completions with a true / false label, or pairs)"
            )
    return items


def _record_id(examples: Sequence[ift.EncodedExample], index: int) -> str:
    ids = getattr(examples, "record_ids", None)
    return str(ids[index]) if ids is not None else examples[index].record_id


def sequence(example: ift.EncodedExample, part: str | None) -> ift.EncodedExample:
    return example.rejected_example() if part == "rejected" else example


def item_lengths(examples: Sequence[ift.EncodedExample], items: Sequence[Item], mode: str) -> list[int]:
    """What length grouping sorts by: a pair's longer sequence (its padded width), or both (packed)."""
    chosen, rejected = tables.lengths(examples), tables.rejected_lengths(examples)
    out = []
    for item in items:
        if item.part is None:
            out.append(
                chosen[item.index] + rejected[item.index]
                if mode == "padding-free"
                else max(chosen[item.index], rejected[item.index])
            )
        else:
            out.append(rejected[item.index] if item.part == "rejected" else chosen[item.index])
    return out


def split_prompt(example: ift.EncodedExample) -> int:
    """Where the completion begins: the first trained position."""
    return next((i for i, label in enumerate(example.labels) if label != -100), len(example.labels))


def mismatched(prompt_of: ift.EncodedExample, completion_of: ift.EncodedExample) -> ift.EncodedExample:
    """``prompt_of``'s prompt followed by ``completion_of``'s completion (trained): KTO's KL estimate."""
    p, q = split_prompt(prompt_of), split_prompt(completion_of)
    return ift.EncodedExample(
        prompt_of.input_ids[:p] + completion_of.input_ids[q:],
        [-100] * p + completion_of.labels[q:],
        prompt_of.source,
        prompt_of.record_id,
    )


class PreferenceCollator:
    """Builds the batches described in the module docstring from lists of :class:`Item` indices."""

    def __init__(
        self,
        adapter: ift.ModelAdapter,
        tokenizer: Any,
        examples: Sequence[ift.EncodedExample],
        items: Sequence[Item],
        *,
        packed: bool = False,
        kl_partners: bool = False,
    ) -> None:
        self.adapter, self.tokenizer, self.examples, self.items = adapter, tokenizer, examples, items
        self.packed, self.kl_partners = packed, kl_partners

    def __call__(self, indices: Sequence[int]) -> dict[str, Any]:
        import torch

        items = [self.items[i] for i in indices]
        built = [self.examples[item.index] for item in items]
        n = len(items)
        if items[0].part is None:  # pairs
            rows = [e for e in built] + [e.rejected_example() for e in built]
            if self.packed:
                row = [sequence for e in built for sequence in (e, e.rejected_example())]
                batch = self.adapter.collate_packed(self.tokenizer, [row])
                batch["attention_mask"] = (batch["example_index"] >= 0).long()  # throughput metering only
                chosen_rows, rejected_rows = torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2)
            else:
                batch = self.adapter.collate(self.tokenizer, rows)
                chosen_rows, rejected_rows = torch.arange(n), torch.arange(n, 2 * n)
            batch["row_ids"] = (
                [e.record_id for e in built for _ in (0, 1)] if self.packed else [e.record_id for e in rows]
            )
            batch.update(chosen_rows=chosen_rows, rejected_rows=rejected_rows)
        else:
            rows = [sequence(e, item.part) for e, item in zip(built, items, strict=True)]
            batch = self.adapter.collate(self.tokenizer, rows)
            batch["row_ids"] = [e.record_id for e in rows]
            batch["desirable"] = torch.tensor([bool(item.desirable) for item in items])
            if self.kl_partners:
                partners = [self.partner(i) for i in indices]
                kl_rows = [
                    mismatched(row, sequence(self.examples[p.index], p.part))
                    for row, p in zip(rows, partners, strict=True)
                ]
                batch["kl"] = self.adapter.collate(self.tokenizer, kl_rows)
                batch["kl"]["row_ids"] = [e.record_id for e in kl_rows]
        batch["pairs"] = n
        batch["loss_tokens"] = int(batch["loss_tokens"])
        batch["index"] = list(indices)
        batch["record_ids"] = [e.record_id for e in built]
        batch["sources"] = [e.source for e in built]
        batch["tasks"] = [e.task for e in built]
        return batch

    def partner(self, position: int) -> Item:
        """The fixed partner of item ``position`` whose completion its KL sequence borrows: the next item whose
        record differs (the same for every epoch and batching, so a reference computed once stays valid)."""
        n = len(self.items)
        own = self.items[position].index
        for step in range(1, n):
            other = self.items[(position + step) % n]
            if other.index != own:
                return other
        return self.items[position]


def make_loader(collator: PreferenceCollator, *, mode: str, batch_size: int, seed: int, shuffle: bool = True) -> Any:
    """A torch DataLoader over ``collator.items`` whose ``batch_sampler`` is an :class:`ift.batching.BatchPlan`
    (``select(epoch, skip=...)`` for exact resume)."""
    import torch
    from torch.utils.data import DataLoader

    if mode not in MODES:
        raise ift.RecipeError(
            [
                ift.Problem(
                    "trainer.batching",
                    f"preference objectives batch with "
                    f"{', '.join(MODES)}; {mode!r} is not supported (packing would split "
                    "or mix pairs)",
                )
            ]
        )
    if mode == "padding-free" and not collator.adapter.supports_packing:
        raise ift.RecipeError(
            [
                ift.Problem(
                    "trainer.batching",
                    f"model adapter {collator.adapter.name!r} cannot pack sequences (padding-free); use length-grouped",
                )
            ]
        )
    collator = copy.copy(collator)  # each loader packs or pads on its own
    collator.packed = mode == "padding-free" and bool(collator.items) and collator.items[0].part is None
    lengths = item_lengths(collator.examples, collator.items, mode)
    plan = BatchPlan(
        "length-grouped" if mode == "length-grouped" else "padding", lengths, batch_size, seed, shuffle=shuffle
    )
    positions: Any = _Positions(len(collator.items))  # a Sequence: all a DataLoader with a batch_sampler reads
    return DataLoader(positions, batch_sampler=plan, collate_fn=collator, generator=torch.Generator().manual_seed(seed))


class _Positions(Sequence[int]):
    """The dataset of item positions: the collator reads the examples itself."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(range(self.n))[index]
        if not 0 <= index < self.n:
            raise IndexError(index)
        return index
