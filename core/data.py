"""The data half of a run: read sources, apply transforms, split train/eval, mix, render and tokenize.

Every record that is dropped is counted by reason; the counts end up in the manifest.
"""

from __future__ import annotations

import gc
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ift.components import EncodedExample, InstructionSource, ModelAdapter, Renderer, Segment, Tally, Transform
from ift.config import TrainerConfig
from ift.errors import DataError, PluginError
from ift.examples import TableWriter
from ift.host import PluginHost
from ift.mixture import MixturePlan, default_strategy, describe, mix, plan_mixture
from ift.recipe import Recipe
from ift.records import InstructionRecord

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = [
    "DataReport",
    "apply_transforms",
    "data_notes",
    "encode_records",
    "read_sources",
    "split_records",
    "stop_strings",
]


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
        out = {"sources": self.sources, "transforms": self.transforms, "split": self.split, "encoding": self.encoding}
        if self.mixture is not None:  # the mixture's arithmetic, and each source's contribution once encoded
            out["mixture"] = describe(self.mixture, self.encoded_per_source.get("train"))
        return out


def read_sources(recipe: Recipe, host: PluginHost, report: DataReport) -> list[InstructionRecord]:
    records: list[InstructionRecord] = []
    for spec in recipe.data:
        source: InstructionSource = spec.cls(
            spec.config, source_name=spec.source_name, base_dir=recipe.base_dir, host=host
        )
        plugin = host.get("source", spec.name)
        got = list(source.records())
        seen: set[str] = set()
        for record in got:
            if record.source != spec.source_name:
                raise PluginError(
                    f"source {spec.name!r} returned a record with source={record.source!r}, "
                    f"expected {spec.source_name!r}",
                    plugin=plugin.plugin,
                    distribution=plugin.distribution,
                )
            if record.id in seen:
                raise DataError(
                    f"source {spec.source_name!r} has two records with id {record.id!r}; "
                    "ids must be unique within a source"
                )
            seen.add(record.id)
            if record.task is None and spec.task is not None:
                record.task = spec.task
            record.metadata.setdefault("split", spec.split)
        entry = {
            "name": spec.source_name,
            "source": spec.name,
            "records": len(got),
            "fingerprint": source.fingerprint(),
            "weight": spec.weight,
        }
        stats = getattr(source, "stats", None)
        if stats:
            entry["stats"] = stats
        report.sources.append(entry)
        records.extend(got)
    return records


def apply_transforms(
    recipe: Recipe, host: PluginHost, records: list[InstructionRecord], report: DataReport
) -> list[InstructionRecord]:
    for spec in recipe.transforms:
        transform: Transform = spec.cls(spec.config, base_dir=recipe.base_dir)
        tally = Tally()
        before = len(records)
        before_split = Counter(_split_of(r) for r in records)
        records = transform.apply(list(records), tally)
        counted = sum(tally.dropped.values())
        if before - len(records) != counted:
            plugin = host.get("transform", spec.name)
            raise PluginError(
                f"transform {spec.name!r} dropped {before - len(records)} records but counted "
                f"{counted}; every drop must be counted with tally.drop(reason)",
                plugin=plugin.plugin,
                distribution=plugin.distribution,
            )
        entry: dict[str, Any] = {
            "name": spec.name,
            "in": before,
            "out": len(records),
            "dropped": dict(tally.dropped),
            "changed": dict(tally.changed),
        }
        after_split = Counter(_split_of(r) for r in records)
        entry["by_split"] = {
            split: {"in": n, "out": after_split.get(split, 0)} for split, n in sorted(before_split.items())
        }
        report.transforms.append(entry)
    return records


def _split_of(record: InstructionRecord) -> str:
    """The split a record's [[data]] table asked for: ``train``, ``eval`` or ``auto`` (held out later)."""
    return str(record.metadata.get("split", "auto"))


def data_notes(report: dict[str, Any]) -> list[str]:
    """Lines for the run output about records that did not reach the split their table asked for: eval
    records dropped by transforms, eval tables cut by ``eval.max_examples``, and records of either split
    dropped (or, for eval, truncated) while encoding (the length policy, a refused record skipped)."""
    notes = []
    for t in report.get("transforms", []):
        counts = t.get("by_split", {}).get("eval")
        if counts and counts["out"] < counts["in"]:
            notes.append(
                f"transform {t['name']!r} dropped {counts['in'] - counts['out']} of {counts['in']} records "
                "of the eval table(s) (split = 'eval')"
            )
    for name, cut in report.get("split", {}).get("cut_by_max_examples", {}).items():
        notes.append(
            f"eval.max_examples = {cut['max_examples']} kept {cut['kept']} of the {cut['records']} records "
            f"of eval table {name!r}; raise eval.max_examples (or set it to nothing) to keep them all"
        )
    for stage, counts in report.get("encoding", {}).items():
        reasons = counts.get("reasons", {})
        dropped = counts.get("in", 0) - counts.get("out", 0)
        if dropped > 0:
            why = ", ".join(f"{reason}: {n}" for reason, n in reasons.items() if reason != "truncated to max_length")
            notes.append(f"encoding dropped {dropped} of the {counts['in']} {stage} records ({why})")
        if stage == "eval" and reasons.get("truncated to max_length"):
            notes.append(
                f"{reasons['truncated to max_length']} of the {counts['in']} eval records were truncated "
                "to trainer.max_length, so they are evaluated cut"
            )
    return notes


def split_records(
    recipe: Recipe, records: list[InstructionRecord], report: DataReport
) -> tuple[list[InstructionRecord], list[InstructionRecord]]:
    """Hold out ``eval.fraction`` of each source (seeded), then remove from training every record whose
    content equals a held-out one, so the eval split never leaks into training. Preference records are held out
    by prompt: every pair of a prompt lands on the same side (:func:`_by_prompt`)."""
    rng = random.Random(recipe.run.order_seed)
    by_source: dict[str, list[InstructionRecord]] = defaultdict(list)
    for record in records:
        by_source[record.source].append(record)
    spec_of = {d.source_name: d for d in recipe.data}
    cap = recipe.eval.max_examples
    train: list[InstructionRecord] = []
    held: list[InstructionRecord] = []
    # eval-only tables first: they take from the cap before the automatic hold-out does
    cut: dict[str, dict[str, int]] = {}
    for name, group in by_source.items():
        if spec_of[name].split == "eval":
            room = len(group) if cap is None else max(0, cap - len(held))
            held.extend(group[:room])
            if room < len(group):  # counted and said: these records are neither trained nor evaluated on
                cut[name] = {"records": len(group), "kept": room, "max_examples": cap or 0}
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
        n_eval = max(1, round(recipe.eval.fraction * len(group))) if len(group) > 1 else 0
        if budget is not None:
            n_eval = min(n_eval, math.floor(budget * len(group) / auto_total))
        if any(r.preference is not None for r in group):
            group, n_eval = _by_prompt(group, n_eval, rng)
        else:
            rng.shuffle(group)
        held.extend(group[:n_eval])
        train.extend(group[n_eval:])
    held_keys = {r.content_key() for r in held}
    kept = [r for r in train if r.content_key() not in held_keys]
    report.split = {"train": len(kept), "eval": len(held), "removed_overlapping_eval": len(train) - len(kept)}
    held_prompts = {r.prompt_key() for r in held if r.preference is not None}
    if held_prompts:  # a preference prompt held out has none of its pairs trained on (eval-only tables too)
        shared = [r for r in kept if r.preference is not None and r.prompt_key() in held_prompts]
        if shared:
            kept = [r for r in kept if r.preference is None or r.prompt_key() not in held_prompts]
            report.split["train"] = len(kept)
            report.split["removed_sharing_eval_prompt"] = len(shared)
    if cut:
        report.split["cut_by_max_examples"] = cut
    return _mix(recipe, kept, rng, report), held


def _by_prompt(group: list[InstructionRecord], n_eval: int, rng: random.Random) -> tuple[list[InstructionRecord], int]:
    """The records of one source in a seeded order where the records of each prompt follow each other (a
    preference dataset often has several pairs per prompt), and how many of the first ones to hold out: whole
    prompts, about ``n_eval`` records, at least one prompt when ``n_eval`` > 0 and never every prompt."""
    prompts: dict[str, list[InstructionRecord]] = {}
    for record in group:
        prompts.setdefault(record.prompt_key() if record.preference is not None else record.content_key(), []).append(
            record
        )
    units = list(prompts.values())
    rng.shuffle(units)
    ordered = [record for unit in units for record in unit]
    held = taken = 0
    while taken < len(units) - 1 and held < n_eval and (held == 0 or held + len(units[taken]) <= n_eval):
        held += len(units[taken])
        taken += 1
    return ordered, held


def _mix(
    recipe: Recipe, train: list[InstructionRecord], rng: random.Random, report: DataReport
) -> list[InstructionRecord]:
    """Apply ``[mixture]`` (see ``ift.mixture``) to the training records; the eval split is already out, so
    upsampling never repeats a held-out record. Draws continue the split's seeded generator."""
    sizes: dict[str, int] = {d.source_name: 0 for d in recipe.data if d.split != "eval"}
    for record in train:
        sizes[record.source] = sizes.get(record.source, 0) + 1
    mixture = recipe.mixture
    plan = plan_mixture(
        sizes,
        strategy=mixture.strategy or default_strategy(d.weight for d in recipe.data),
        weights={d.source_name: d.weight for d in recipe.data},
        temperature=mixture.temperature,
        cap=mixture.cap,
        total=mixture.total,
    )
    report.mixture = plan
    if plan.strategy == "concat":
        return train
    report.split["weighted_train"] = {name: count for name, count in plan.counts().items() if sizes[name]}
    return mix(train, plan, rng)


ENCODE_BATCH = 512  # records rendered and tokenized per adapter call (ModelAdapter.encode_many)


def encode_records(
    records: list[InstructionRecord],
    renderer: Renderer,
    adapter: ModelAdapter,
    tokenizer: Any,
    trainer_cfg: TrainerConfig,
    stage: str,
    report: DataReport,
    *,
    bad_records: dict[str, tuple[str, str | None]] | None = None,
    into: Path | None = None,
) -> tuple[Any, list[InstructionRecord]]:
    """Render and tokenize (in batches, through :meth:`ModelAdapter.encode_many`); apply the length policy.
    Returns examples and the records they came from. The examples are a list, or with ``into`` an
    :class:`~ift.examples.ExampleTable` streamed into that folder (memory stays bounded).

    A record the template refuses is a data error naming its source and record (file and line where known);
    ``bad_records`` (source name -> (``on_bad_rows``, file), see :func:`bad_record_policy`) lets a source with
    ``on_bad_rows = "skip"`` drop it instead, counted by reason. Tokens straddling a trainable boundary are counted
    per example (``straddling``) and the renderer's notices are kept (``warnings``).

    The objects alive when encoding starts (the records, above all) are frozen out of the cyclic garbage
    collector meanwhile (:func:`frozen_gc`)."""
    with frozen_gc():
        return _encode_records(
            records, renderer, adapter, tokenizer, trainer_cfg, stage, report, bad_records=bad_records, into=into
        )


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Move every object alive now out of the cyclic garbage collector's reach (``gc.freeze``) until the block
    ends, even by an exception (``gc.unfreeze``). Encoding a million records keeps tens of millions of objects
    alive; without this each full collection walks them all (1.4 s a pass) and encoding only makes short-lived
    ones. Nothing is done when objects are frozen already (an enclosing block, or a process that froze its own
    before forking: its freeze is left as it is) or the collector is disabled."""
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _encode_records(
    records: list[InstructionRecord],
    renderer: Renderer,
    adapter: ModelAdapter,
    tokenizer: Any,
    trainer_cfg: TrainerConfig,
    stage: str,
    report: DataReport,
    *,
    bad_records: dict[str, tuple[str, str | None]] | None,
    into: Path | None,
) -> tuple[Any, list[InstructionRecord]]:
    writer = TableWriter(into) if into is not None else None
    examples: list[EncodedExample] = []
    kept: list[InstructionRecord] = []
    reasons: Counter[str] = Counter()
    straddling: dict[str, int] = {}
    bad = bad_records or {}
    per_source: dict[str, dict[str, int]] = {}
    tokens = trainable_total = count = 0
    for start in range(0, len(records), ENCODE_BATCH):
        chunk: list[tuple[InstructionRecord, list[list[Segment]]]] = []
        for record in records[start : start + ENCODE_BATCH]:
            try:
                if record.preference is not None:
                    if not adapter.supports_preference:
                        raise DataError(
                            f"model adapter {adapter.name!r} cannot encode preference records "
                            f"(record {record.id!r} of source {record.source!r}); use causal-lm"
                        )
                    chunk.append((record, renderer.render_completions(record)))
                else:
                    chunk.append((record, [renderer.render(record)]))
            except DataError as exc:  # the template refuses this conversation: an error of the record, not the run
                policy, path = bad.get(record.source, ("error", None))
                if policy == "skip":
                    reasons["the template refuses the record"] += 1
                    continue
                meta = record.metadata if isinstance(record.metadata, dict) else {}
                line = meta.get("line") if path else None
                raise DataError(
                    f'source {record.source!r}, record {record.id!r}: {exc} (on_bad_rows = "skip" skips such records)',
                    file=path,
                    line=line if isinstance(line, int) else None,
                ) from None
        # a preference record's completions are encoded as sequences of their own, then joined (_join)
        encoded = iter(
            adapter.encode_many(
                tokenizer, [(record, segments) for record, renderings in chunk for segments in renderings]
            )
        )
        for record, renderings in chunk:
            parts = [next(encoded) for _ in renderings]
            if any(part.straddling for part in parts):
                straddling[record.id] = sum(part.straddling for part in parts)
            fitted, reason = _fit(adapter, parts, trainer_cfg)
            if reason:
                reasons[reason] += 1
            if fitted is None:
                continue
            fitted.task = record.task  # set here, not by each adapter (nor lost by an adapter's own fit())
            if record.preference == "unpaired":
                fitted.desirable = record.desirable
            trainable = fitted.trainable_tokens
            if trainable == 0 or (fitted.rejected_ids is not None and fitted.rejected_trainable_tokens == 0):
                reasons["no trainable tokens"] += 1
                continue
            trainable += fitted.rejected_trainable_tokens
            if writer is not None:
                writer.add(fitted, trainable)
            else:
                examples.append(fitted)
            kept.append(record)
            n = len(fitted.input_ids) + len(fitted.rejected_ids or ())
            count, tokens, trainable_total = count + 1, tokens + n, trainable_total + trainable
            counts = per_source.setdefault(fitted.source, {"examples": 0, "tokens": 0, "trainable_tokens": 0})
            counts["examples"] += 1
            counts["tokens"] += n
            counts["trainable_tokens"] += trainable
    report.encoding[stage] = {
        "in": len(records),
        "out": count,
        "reasons": dict(reasons),
        "tokens": tokens,
        "trainable_tokens": trainable_total,
    }
    report.encoded_per_source[stage] = per_source
    if straddling:
        report.encoding[stage]["straddling"] = {
            "tokens": sum(straddling.values()),
            "examples": len(straddling),
            "by_example": dict(list(straddling.items())[:STRADDLE_LISTED]),
        }
    warnings = list(renderer.notices())
    if straddling:
        warnings.append(
            f"{sum(straddling.values())} token(s) in {len(straddling)} example(s) begin in the prompt "
            "and reach into the answer; they are not trained (see docs/masks.md, 'straddling tokens')"
        )
    if warnings:
        report.encoding[stage]["warnings"] = warnings
    if writer is None:
        return examples, kept
    return writer.close(), kept


def _fit(
    adapter: ModelAdapter, parts: list[EncodedExample], trainer_cfg: TrainerConfig
) -> tuple[EncodedExample | None, str | None]:
    """The length policy on one example, or on each sequence of a pair, which is kept only whole (both sequences
    fit, or are cut, and keep trainable tokens)."""
    fitted, reasons = [], []
    for part in parts:
        one, reason = adapter.fit(part, max_length=trainer_cfg.max_length, overlong=trainer_cfg.overlong)
        fitted.append(one)
        reasons.append(reason)
    reason = next((r for r in reasons if r), None)
    if any(one is None for one in fitted):
        return None, reason
    first = fitted[0]
    assert first is not None
    if len(fitted) == 2 and fitted[1] is not None:
        first.rejected_ids, first.rejected_labels = fitted[1].input_ids, fitted[1].labels
        first.truncated = first.truncated or fitted[1].truncated
    return first, reason


STRADDLE_LISTED = 50  # examples named in the manifest's straddling counts


def bad_record_policy(recipe: Recipe) -> dict[str, tuple[str, str | None]]:
    """Each source's ``on_bad_rows`` (``"error"`` when it has none) and file (when it reads one)."""
    out: dict[str, tuple[str, str | None]] = {}
    for spec in recipe.data:
        policy = str(getattr(spec.config, "on_bad_rows", "error"))
        path = getattr(spec.config, "path", None)
        out[spec.source_name] = (policy, str(recipe.base_dir / path) if isinstance(path, str) else None)
    return out


def stop_strings(renderer: Renderer, record: InstructionRecord) -> list[str]:
    """The text a renderer puts after an answer inside the trainable span (EOS, end-of-turn)."""
    trainable = [s.text for s in renderer.render(record) if s.trainable]
    if trainable and trainable[-1].startswith(record.answer):
        suffix = trainable[-1][len(record.answer) :].strip()
        return [suffix] if suffix else []
    return []
