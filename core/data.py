"""The data half of a run: read sources, apply transforms, split train/eval, mix, render and tokenize.

Every record that is dropped is counted by reason; the counts end up in the manifest.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ift.components import EncodedExample, InstructionSource, ModelAdapter, Renderer, Tally, Transform
from ift.config import TrainerConfig
from ift.errors import DataError, PluginError
from ift.examples import TableWriter
from ift.host import PluginHost
from ift.mixture import MixturePlan, describe, mix, plan_mixture
from ift.recipe import Recipe, default_strategy
from ift.records import InstructionRecord


@dataclass
class DataReport:
    """Counts for the manifest: what was read, dropped (by stage and reason), and kept."""

    sources: list[dict[str, Any]] = field(default_factory=list)
    transforms: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)
    mixture: MixturePlan | None = None
    encoded_per_source: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # stage -> source

    def to_dict(self) -> dict[str, Any]:
        out = {"sources": self.sources, "transforms": self.transforms, "split": self.split,
               "encoding": self.encoding}
        if self.mixture is not None:  # the mixture's arithmetic, and each source's contribution once encoded
            out["mixture"] = describe(self.mixture, self.encoded_per_source.get("train"))
        return out


def read_sources(recipe: Recipe, host: PluginHost, report: DataReport) -> list[InstructionRecord]:
    records: list[InstructionRecord] = []
    for spec in recipe.data:
        source: InstructionSource = spec.cls(spec.config, source_name=spec.source_name, base_dir=recipe.base_dir,
                                             host=host)
        plugin = host.get("source", spec.name)
        got = list(source.records())
        seen: set[str] = set()
        for record in got:
            if record.source != spec.source_name:
                raise PluginError(f"source {spec.name!r} returned a record with source={record.source!r}, "
                                  f"expected {spec.source_name!r}", plugin=plugin.plugin,
                                  distribution=plugin.distribution)
            if record.id in seen:
                raise DataError(f"source {spec.source_name!r} has two records with id {record.id!r}; "
                                "ids must be unique within a source")
            seen.add(record.id)
            if record.task is None and spec.task is not None:
                record.task = spec.task
            record.metadata.setdefault("split", spec.split)
        entry = {"name": spec.source_name, "source": spec.name, "records": len(got),
                 "fingerprint": source.fingerprint(), "weight": spec.weight}
        stats = getattr(source, "stats", None)
        if stats:
            entry["stats"] = stats
        report.sources.append(entry)
        records.extend(got)
    return records


def apply_transforms(recipe: Recipe, host: PluginHost, records: list[InstructionRecord],
                     report: DataReport) -> list[InstructionRecord]:
    for spec in recipe.transforms:
        transform: Transform = spec.cls(spec.config, base_dir=recipe.base_dir)
        tally = Tally()
        before = len(records)
        records = transform.apply(list(records), tally)
        counted = sum(tally.dropped.values())
        if before - len(records) != counted:
            plugin = host.get("transform", spec.name)
            raise PluginError(f"transform {spec.name!r} dropped {before - len(records)} records but counted "
                              f"{counted}; every drop must be counted with tally.drop(reason)",
                              plugin=plugin.plugin, distribution=plugin.distribution)
        report.transforms.append({"name": spec.name, "in": before, "out": len(records),
                                  "dropped": dict(tally.dropped), "changed": dict(tally.changed)})
    return records


def split_records(recipe: Recipe, records: list[InstructionRecord],
                  report: DataReport) -> tuple[list[InstructionRecord], list[InstructionRecord]]:
    """Hold out ``eval.fraction`` of each source (seeded), then remove from training every record whose
    content equals a held-out one, so the eval split never leaks into training."""
    rng = random.Random(recipe.run.order_seed)
    by_source: dict[str, list[InstructionRecord]] = defaultdict(list)
    for record in records:
        by_source[record.source].append(record)
    spec_of = {d.source_name: d for d in recipe.data}
    cap = recipe.eval.max_examples
    train: list[InstructionRecord] = []
    held: list[InstructionRecord] = []
    # eval-only tables first: they take from the cap before the automatic hold-out does
    for name, group in by_source.items():
        if spec_of[name].split == "eval":
            room = len(group) if cap is None else max(0, cap - len(held))
            held.extend(group[:room])
    budget = None if cap is None else max(0, cap - len(held))
    auto = {k: v for k, v in by_source.items() if spec_of[k].split == "auto" and recipe.eval.fraction > 0}
    auto_total = sum(len(v) for v in auto.values())
    for name, group in by_source.items():
        if spec_of[name].split == "eval":
            continue
        if name not in auto:
            train.extend(group)
            continue
        group = list(group)
        rng.shuffle(group)
        n_eval = max(1, round(recipe.eval.fraction * len(group))) if len(group) > 1 else 0
        if budget is not None:
            n_eval = min(n_eval, math.floor(budget * len(group) / auto_total))
        held.extend(group[:n_eval])
        train.extend(group[n_eval:])
    held_keys = {r.content_key() for r in held}
    kept = [r for r in train if r.content_key() not in held_keys]
    report.split = {"train": len(kept), "eval": len(held), "removed_overlapping_eval": len(train) - len(kept)}
    return _mix(recipe, kept, rng, report), held


def _mix(recipe: Recipe, train: list[InstructionRecord], rng: random.Random,
         report: DataReport) -> list[InstructionRecord]:
    """Apply ``[mixture]`` (see ``ift.mixture``) to the training records; the eval split is already out, so
    upsampling never repeats a held-out record. Draws continue the split's seeded generator."""
    sizes: dict[str, int] = {d.source_name: 0 for d in recipe.data if d.split != "eval"}
    for record in train:
        sizes[record.source] = sizes.get(record.source, 0) + 1
    mixture = recipe.mixture
    plan = plan_mixture(sizes, strategy=mixture.strategy or default_strategy(recipe.data),
                        weights={d.source_name: d.weight for d in recipe.data}, temperature=mixture.temperature,
                        cap=mixture.cap, total=mixture.total)
    report.mixture = plan
    if plan.strategy == "concat":
        return train
    report.split["weighted_train"] = {name: count for name, count in plan.counts().items() if sizes[name]}
    return mix(train, plan, rng)


ENCODE_BATCH = 512  # records rendered and tokenized per adapter call (ModelAdapter.encode_many)


def encode_records(records: list[InstructionRecord], renderer: Renderer, adapter: ModelAdapter,
                   tokenizer: Any, trainer_cfg: TrainerConfig, stage: str, report: DataReport, *,
                   into: Path | None = None) -> tuple[Any, list[InstructionRecord]]:
    """Render and tokenize (in batches, through :meth:`ModelAdapter.encode_many`); apply the length policy.
    Returns examples and the records they came from. The examples are a list, or with ``into`` an
    :class:`~ift.examples.ExampleTable` streamed into that folder (memory stays bounded)."""
    writer = TableWriter(into) if into is not None else None
    examples: list[EncodedExample] = []
    kept: list[InstructionRecord] = []
    reasons: Counter[str] = Counter()
    per_source: dict[str, dict[str, int]] = {}
    tokens = trainable_total = count = 0
    for start in range(0, len(records), ENCODE_BATCH):
        chunk = records[start:start + ENCODE_BATCH]
        encoded = adapter.encode_many(tokenizer, [(record, renderer.render(record)) for record in chunk])
        for record, example in zip(chunk, encoded, strict=True):
            fitted, reason = adapter.fit(example, max_length=trainer_cfg.max_length, overlong=trainer_cfg.overlong)
            if reason:
                reasons[reason] += 1
            if fitted is None:
                continue
            fitted.task = record.task  # set here, not by each adapter (nor lost by an adapter's own fit())
            trainable = fitted.trainable_tokens
            if trainable == 0:
                reasons["no trainable tokens"] += 1
                continue
            if writer is not None:
                writer.add(fitted, trainable)
            else:
                examples.append(fitted)
            kept.append(record)
            n = len(fitted.input_ids)
            count, tokens, trainable_total = count + 1, tokens + n, trainable_total + trainable
            counts = per_source.setdefault(fitted.source, {"examples": 0, "tokens": 0, "trainable_tokens": 0})
            counts["examples"] += 1
            counts["tokens"] += n
            counts["trainable_tokens"] += trainable
    report.encoding[stage] = {"in": len(records), "out": count, "reasons": dict(reasons), "tokens": tokens,
                              "trainable_tokens": trainable_total}
    report.encoded_per_source[stage] = per_source
    if writer is None:
        return examples, kept
    return writer.close(), kept


def stop_strings(renderer: Renderer, record: InstructionRecord) -> list[str]:
    """The text a renderer puts after an answer inside the trainable span (EOS, end-of-turn)."""
    trainable = [s.text for s in renderer.render(record) if s.trainable]
    if trainable and trainable[-1].startswith(record.answer):
        suffix = trainable[-1][len(record.answer):].strip()
        return [suffix] if suffix else []
    return []
