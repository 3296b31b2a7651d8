"""The numbers of the data quality report: a pure function of a record list (no model, no torch).

Each record's features are computed once; the overall and per-source sections aggregate them.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ift.builtin_plugins.cleaning.decontam import contamination
from ift.builtin_plugins.cleaning.minhash import NearDuplicateFinder, shingle_set
from ift.builtin_plugins.cleaning.tagging import KeywordTagger
from ift.builtin_plugins.cleaning.text import conversation, instruction, is_eval, structure_problem, words
from ift.builtin_plugins.quality.heuristics import (
    CONTAMINATION_N,
    DEFINITIONS,
    SHORT_WORDS,
    copies_input,
    is_fragmentary,
    looks_truncated,
    outside_choices,
    schema,
)
from ift.builtin_plugins.quality.verbs import leading_verb
from ift.records import InstructionRecord

REPORT_VERSION = 3  # 2: schema conformity per source's own schema; flagged items list ids;
#                    3: so does contamination (the records overlapping the eval set)
TOP = 20  # entries kept in top-verb / verb-object lists
TREE_VERBS, TREE_OBJECTS = 20, 4  # the verb -> object tree behind the sunburst plot
LENGTH_BINS = [1, 3, 5, 10, 20, 50, 100, 200, 500]  # histogram edges, in words (last bin open)
NEAR_DUPLICATE: dict[str, Any] = {"threshold": 0.7, "shingle_size": 3}  # minhash on word 3-grams of the conversation


@dataclass(slots=True)
class Features:
    """What the report needs from one record."""

    tokens: list[str]  # instruction words
    verb: str | None
    obj: str | None
    task: str  # the record's own, else inferred ("(none)" when no rule matched)
    task_inferred: bool
    domain: str
    domain_inferred: bool
    fragmentary: bool
    answer_words: int
    schema: str
    turns: int
    problem: str | None
    empty: bool
    copied: bool
    truncated: bool
    choices: bool
    outside: bool
    shingles: set[int]
    id: str = ""
    source: str = ""
    text: str = ""


def features(record: InstructionRecord, tagger: KeywordTagger) -> Features:
    text = instruction(record)
    verb, obj = leading_verb(text)
    domain = record.metadata.get("domain")
    whole = conversation(record)
    return Features(
        tokens=words(text),
        verb=verb,
        obj=obj,
        task=record.task if record.task is not None else (tagger.task(text) or "(none)"),
        task_inferred=record.task is None,
        domain=str(domain) if domain is not None else (tagger.domain(whole) or "(none)"),
        domain_inferred=domain is None,
        fragmentary=is_fragmentary(text),
        answer_words=len(words(record.answer)),
        schema=schema(record),
        turns=len(record.messages),
        problem=structure_problem(record),
        empty=not record.answer.strip(),
        copied=copies_input(record),
        truncated=looks_truncated(record.answer),
        choices=bool(record.choices),
        outside=bool(record.choices) and outside_choices(record),
        shingles=shingle_set(whole, "word", NEAR_DUPLICATE["shingle_size"]),
        id=record.id,
        source=record.source,
        text=text,
    )


FLAGGED_IDS = 50  # record ids listed per flagged item
FLAGGED_EXAMPLES = 3  # instructions shown per flagged item
EXAMPLE_CHARS = 160


def _count(n: int, total: int) -> dict[str, Any]:
    return {"count": n, "share": round(n / total, 4) if total else 0.0}


def _flagged(group: Sequence[Features], flags: Sequence[bool], total: int | None = None) -> dict[str, Any]:
    """Count and share of the flagged records, with their ids (the first ``FLAGGED_IDS``, as ``source/id``)
    and a few examples, so that a person can find and fix them."""
    hits = [f for f, flag in zip(group, flags, strict=True) if flag]
    out = _count(len(hits), len(group) if total is None else total)
    if hits:
        out["ids"] = [f"{f.source}/{f.id}" for f in hits[:FLAGGED_IDS]]
        out["examples"] = [
            {"id": f"{f.source}/{f.id}", "instruction": f.text[:EXAMPLE_CHARS]} for f in hits[:FLAGGED_EXAMPLES]
        ]
    return out


def _percentiles(values: Sequence[int]) -> dict[str, Any]:
    if not values:
        return {"min": 0, "p10": 0, "p25": 0, "median": 0, "p75": 0, "p90": 0, "max": 0, "mean": 0.0}
    ordered = sorted(values)

    def at(q: float) -> int:  # nearest-rank percentile: the smallest value with at least q of the values <= it
        return ordered[max(0, math.ceil(q * len(ordered) - 1e-9) - 1)]

    return {
        "min": ordered[0],
        "p10": at(0.10),
        "p25": at(0.25),
        "median": at(0.5),
        "p75": at(0.75),
        "p90": at(0.90),
        "max": ordered[-1],
        "mean": round(sum(ordered) / len(ordered), 2),
    }


def _histogram(values: Sequence[int]) -> dict[str, Any]:
    edges = zip(LENGTH_BINS, LENGTH_BINS[1:], strict=False)
    labels = [f"{lo}-{hi - 1}" if hi - 1 > lo else str(lo) for lo, hi in edges]
    labels = ["0", *labels, f"{LENGTH_BINS[-1]}+"]
    counts = [0] * len(labels)
    for v in values:
        counts[0 if v < LENGTH_BINS[0] else sum(v >= edge for edge in LENGTH_BINS)] += 1
    return {"bins": labels, "counts": counts}


def distinct_n(texts: Sequence[list[str]], n: int) -> float:
    grams = [tuple(t[i : i + n]) for t in texts for i in range(len(t) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def _labels(values: Sequence[str], inferred: Sequence[bool]) -> dict[str, Any]:
    return {"counts": dict(Counter(values).most_common()), "inferred": sum(inferred)}


def _verb_tree(verbs: Counter[str], pairs: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
    """The most common verbs, each with its most common objects (the Self-Instruct sunburst's data)."""
    objects: dict[str, Counter[str]] = defaultdict(Counter)
    for (verb, obj), count in pairs.items():
        objects[verb][obj] = count
    return [
        {"verb": v, "count": c, "objects": [{"object": o, "count": k} for o, k in objects[v].most_common(TREE_OBJECTS)]}
        for v, c in verbs.most_common(TREE_VERBS)
    ]


def group_report(group: Sequence[Features], expected: dict[str, str] | None = None) -> dict[str, Any]:
    """Every section of the report for one group of records. ``expected`` is each source's own schema (its
    most common set of fields): a record conforms when it has its own source's schema, so a mixture of
    sources with different but consistent shapes is 100% conforming. Default: the group's most common."""
    n = len(group)
    verbs = Counter(f.verb for f in group if f.verb)
    pairs = Counter((f.verb, f.obj) for f in group if f.verb and f.obj)
    finder = NearDuplicateFinder(method="minhash", shingles="word", **NEAR_DUPLICATE)  # type: ignore[arg-type]
    near = finder.find([""] * n, sets=[f.shingles for f in group])
    lengths = [len(f.tokens) for f in group]
    schemas = Counter(f.schema for f in group)
    if expected is None:
        expected = {f.source: schemas.most_common(1)[0][0] for f in group}
    odd_schema = [f.schema != expected.get(f.source) for f in group]
    problems = Counter(f.problem for f in group if f.problem)
    with_choices = sum(f.choices for f in group)
    return {
        "records": n,
        "diversity": {
            "distinct_1": distinct_n([f.tokens for f in group], 1),
            "distinct_2": distinct_n([f.tokens for f in group], 2),
            "leading_verbs": {
                **_count(sum(verbs.values()), n),
                "unique": len(verbs),
                "top": [{"verb": v, "count": c} for v, c in verbs.most_common(TOP)],
            },
            "verb_objects": {
                "unique": len(pairs),
                "top": [{"verb": v, "object": o, "count": c} for (v, o), c in pairs.most_common(TOP)],
                "tree": _verb_tree(verbs, pairs),
            },  # type: ignore[arg-type]
            "tasks": _labels([f.task for f in group], [f.task_inferred for f in group]),
            "domains": _labels([f.domain for f in group], [f.domain_inferred for f in group]),
            "near_duplicates": _flagged(group, [m is not None for m in near]),
        },
        "clarity": {
            "instruction_words": _percentiles(lengths),
            "histogram": _histogram(lengths),
            "very_short": _flagged(group, [x < SHORT_WORDS for x in lengths]),
            "fragmentary": _flagged(group, [f.fragmentary for f in group]),
            "answer_words": _percentiles([f.answer_words for f in group]),
        },
        "consistency": {
            "schema_conformity": round(1 - sum(odd_schema) / n, 4) if n else 0.0,
            "schema_nonconforming": _flagged(group, odd_schema),
            "schemas": [{"fields": s, "count": c} for s, c in schemas.most_common()],
            "turns": {str(k): v for k, v in sorted(Counter(f.turns for f in group).items())},
            "role_order_problems": {
                **_flagged(group, [bool(f.problem) for f in group]),
                "by_kind": dict(problems.most_common()),
            },
        },
        "accuracy": {
            "empty_outputs": _flagged(group, [f.empty for f in group]),
            "copied_input": _flagged(group, [f.copied for f in group]),
            "truncated_outputs": _flagged(group, [f.truncated for f in group]),
            "with_choices": with_choices,
            "outside_choices": _flagged(group, [f.outside for f in group], with_choices),
        },
    }


def quality_report(
    records: list[InstructionRecord], *, eval_records: list[InstructionRecord] | None = None
) -> dict[str, Any]:
    """Diversity, clarity, consistency and accuracy proxies of ``records``, overall and per source.

    With ``eval_records`` (and/or records of eval-only tables among ``records``), also the share of the
    other records that overlap them (``contamination``). The result is plain JSON-serialisable data.
    """
    tagger = KeywordTagger()
    every = [features(r, tagger) for r in records]
    by_source: dict[str, list[Features]] = defaultdict(list)
    for record, feature in zip(records, every, strict=True):
        by_source[record.source].append(feature)
    expected = {name: Counter(f.schema for f in group).most_common(1)[0][0] for name, group in by_source.items()}
    overall = group_report(every, expected)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "records": len(records),
        "sources": {k: len(v) for k, v in by_source.items()},
        "overall": overall,
        "per_source": {
            name: overall if len(by_source) == 1 else group_report(group, expected) for name, group in by_source.items()
        },
        "definitions": DEFINITIONS,
    }
    reference = [r for r in records if is_eval(r)] + list(eval_records or [])
    if reference:
        subjects = [(r, f) for r, f in zip(records, every, strict=True) if not is_eval(r)]
        shares = contamination([r for r, _ in subjects], reference, n=CONTAMINATION_N, fields="prompt")
        overlapping = [s > 0 for s in shares]
        hit: Counter[str] = Counter(r.source for (r, _), o in zip(subjects, overlapping, strict=True) if o)
        totals = Counter(r.source for r, _ in subjects)
        report["contamination"] = {  # flagged like the other items: which records, and a few of them
            "n": CONTAMINATION_N,
            "eval_records": len(reference),
            **_flagged([f for _, f in subjects], overlapping),
            "per_source": {name: _count(hit[name], totals[name]) for name in totals},
        }
    return report
