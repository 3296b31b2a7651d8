"""Multi-task mixtures: how many training examples each ``[[data]]`` source contributes.

The plan is pure arithmetic over source sizes (``plan_mixture``), so it can be checked without data; ``mix``
then draws the records with the run's data seed, and ``describe`` writes the arithmetic and what each source
actually contributed (examples and tokens, known after encoding) into the manifest and ``metrics.json``.

Strategies (``n_i``: a source's training records after the eval split; ``K``: ``mixture.cap``):

- ``concat``: every training record once (``n_i`` examples).
- ``proportional``: shares ``min(n_i, K) / sum_j min(n_j, K)``; without ``mixture.total`` the mixture has
  ``sum_j min(n_j, K)`` examples, so each source gives ``min(n_i, K)``.
- ``weighted``: each source on its own: ``min(round(weight_i * n_i), K)`` examples (a weight above 1 repeats
  records, below 1 keeps a seeded subset; ``K`` is a hard cap on the count).
- ``temperature``: shares ``min(n_i, K) ** (1/T) / sum_j min(n_j, K) ** (1/T)``.

Where a total applies (``proportional``, ``temperature``), ``N`` = ``mixture.total`` or ``sum_j min(n_j, K)``,
and the counts are ``N * share_i`` rounded by the largest-remainder method, so they sum to exactly ``N`` and
each is within one example of its target. A count above ``n_i`` repeats every record ``count // n_i`` times
and draws the rest without repeats; a count below ``n_i`` is a seeded sample without repeats. The eval split
is taken before mixing, so held-out records are never repeated. One training epoch is one pass over the
mixed list.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ift.errors import Problem
from ift.host import did_you_mean
from ift.records import InstructionRecord

STRATEGIES = ("concat", "proportional", "weighted", "temperature")

RULES = {
    "concat": "examples_i = n_i (every training record once)",
    "proportional": "share_i = min(n_i, cap) / sum_j min(n_j, cap); examples_i = total * share_i "
    "(largest-remainder rounding; total defaults to sum_j min(n_j, cap))",
    "weighted": "examples_i = min(round(weight_i * n_i), cap)",
    "temperature": "share_i = min(n_i, cap)^(1/T) / sum_j min(n_j, cap)^(1/T); examples_i = total * share_i "
    "(largest-remainder rounding; total defaults to sum_j min(n_j, cap))",
}


# --- the [mixture] section ---------------------------------------------------------------


class MixtureSection(BaseModel):
    """How several [[data]] tables are mixed into one training list (the arithmetic is in this module's plan).

    One training epoch is one pass over the mixed list. Without a strategy, a recipe whose weights are all 1
    concatenates its sources and one with any other weight uses ``weighted``, as recipes always did."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["concat", "proportional", "weighted", "temperature"] | None = Field(
        None,
        description="concat | proportional | weighted | temperature; default: concat when every weight "
        "is 1, else weighted.",
    )
    temperature: float | None = Field(None, gt=0, description="temperature only: T in rate ~ min(n, cap)^(1/T).")
    cap: int | None = Field(
        None,
        gt=0,
        description="Per-source limit: K in the rate (proportional, temperature), a hard cap on the count (weighted).",
    )
    total: int | None = Field(
        None, gt=0, description="Examples in the mixed list (proportional, temperature); default: sum of min(n, cap)."
    )

    @field_validator("strategy", mode="before")
    @classmethod
    def _known_strategy(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in STRATEGIES:
            raise ValueError(
                f"unknown strategy {value!r}{did_you_mean(value, STRATEGIES)}; strategies are {', '.join(STRATEGIES)}"
            )
        return value


def default_strategy(weights: Iterable[float]) -> str:
    """The strategy of a recipe without ``mixture.strategy``, from its [[data]] weights: what they have always
    meant."""
    return "concat" if all(w == 1.0 for w in weights) else "weighted"


# Which [mixture] keys each strategy reads; any other key given is a problem, not silently ignored.
_MIXTURE_KEYS = {
    "concat": (),
    "proportional": ("cap", "total"),
    "weighted": ("cap",),
    "temperature": ("temperature", "cap", "total"),
}


def check_section(
    mixture: MixtureSection | None, weights: Sequence[float], tables: Any, problems: list[Problem]
) -> MixtureSection:
    """Check a validated [mixture] section against its strategy and the [[data]] tables (``tables``: the raw
    list, for their ``weight`` keys; ``weights``: the validated weights), adding problems; the result carries
    the resolved strategy. ``mixture`` None (the section itself had problems): the default strategy alone."""
    if mixture is None:
        return MixtureSection.model_validate({"strategy": default_strategy(weights)})
    strategy = mixture.strategy or default_strategy(weights)
    how = f"mixture.strategy = {strategy!r}" + ("" if mixture.strategy else " (the default for these weights)")
    for key in ("temperature", "cap", "total"):
        if getattr(mixture, key) is not None and key not in _MIXTURE_KEYS[strategy]:
            users = [repr(s) for s, keys in _MIXTURE_KEYS.items() if key in keys]
            readers = (
                f"strategy {users[0]}" if len(users) == 1 else f"strategies {', '.join(users[:-1])} and {users[-1]}"
            )
            verb = "reads" if len(users) == 1 else "read"
            problems.append(Problem(f"mixture.{key}", f"is not used by {how}; only {readers} {verb} it"))
    if strategy == "temperature" and mixture.temperature is None:
        problems.append(
            Problem(
                "mixture.temperature",
                "required by strategy 'temperature': e.g. 2.0 (1 gives "
                "the proportional shares; larger values move the shares toward equal)",
            )
        )
    if strategy in ("concat", "proportional", "temperature"):
        for i, table in enumerate(tables if isinstance(tables, list) else []):
            weight = table.get("weight", 1.0) if isinstance(table, dict) else 1.0
            if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0 and weight != 1:
                effect = "uses every record once" if strategy == "concat" else "sets the shares from source sizes"
                problems.append(
                    Problem(
                        f"data[{i}].weight",
                        f"is {weight:g}, but {how} {effect}; only strategy 'weighted' reads weights",
                    )
                )
    return mixture.model_copy(update={"strategy": strategy})


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourcePlan:
    """One source's line of the plan: its size, the size the rule counts it as, its share and count."""

    name: str
    records: int  # n_i: training records after the eval split
    weight: float
    effective_size: float  # what the rule counts the source as: min(n_i, cap), or min(weight * n_i, cap)
    share: float  # target share of the mixture
    target: float  # the unrounded number of examples the rule asks for
    examples: int  # the count drawn


@dataclass(frozen=True)
class MixturePlan:
    strategy: str
    temperature: float | None
    cap: int | None
    total: int  # examples in the mixed list (one epoch)
    sources: list[SourcePlan] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {s.name: s.examples for s in self.sources}


def largest_remainder(quotas: Sequence[Fraction], total: int) -> list[int]:
    """Integers summing to ``total``, each the floor or ceiling of its quota (the quotas sum to ``total``).

    The units left after flooring go to the largest fractional parts; ties go to the earlier source, so the
    result depends on nothing but the quotas and their order."""
    floors = [math.floor(q) for q in quotas]
    left = total - sum(floors)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return floors


def _rate_weights(sizes: list[int], temperature: float) -> list[Fraction]:
    """``size ** (1/T)`` for each source, scaled by the largest size first so no power overflows.

    This is temperature-scaled mixing from Raffel et al. 2020, "Exploring the Limits of Transfer Learning
    with a Unified Text-to-Text Transformer" (T5), section 3.5.2: examples-proportional rates
    ``min(n_i, K) / sum_j min(n_j, K)`` (K an artificial size limit, so one huge source cannot crowd out the
    rest) raised to the power 1/T and renormalized; T = 1 is examples-proportional mixing and T -> inf
    approaches equal mixing. The sizes passed here are already limited by K.

    T = 1 keeps the sizes as exact integers, which makes ``temperature`` with T = 1 identical to
    ``proportional`` (the same counts, the same records); an empty source always has rate 0."""
    if temperature == 1.0:
        return [Fraction(s) for s in sizes]
    largest = max(sizes, default=0)
    if largest == 0:
        return [Fraction(0)] * len(sizes)
    exponent = 1.0 / temperature  # T = inf gives 0: every non-empty source weighs the same
    return [Fraction((s / largest) ** exponent) if s > 0 else Fraction(0) for s in sizes]


def plan_mixture(
    sizes: dict[str, int],
    *,
    strategy: str,
    weights: dict[str, float] | None = None,
    temperature: float | None = None,
    cap: int | None = None,
    total: int | None = None,
) -> MixturePlan:
    """How many examples each source contributes; ``sizes`` are training records per source, in recipe order."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mixture strategy {strategy!r}; strategies are {', '.join(STRATEGIES)}")
    names = list(sizes)
    n = [sizes[name] for name in names]
    w = [float((weights or {}).get(name, 1.0)) for name in names]
    limit = math.inf if cap is None else cap

    if strategy in ("concat", "weighted"):
        if strategy == "concat":
            effective: list[float] = [float(x) for x in n]
            counts = list(n)
        else:
            effective = [min(wi * ni, limit) for wi, ni in zip(w, n, strict=True)]
            # round() per source (half to even) is what weights have always meant; the cap is a hard cap
            counts = [round(wi * ni) for wi, ni in zip(w, n, strict=True)]
            counts = counts if cap is None else [min(c, cap) for c in counts]
        planned = sum(counts)
        return MixturePlan(
            strategy,
            None,
            cap,
            planned,
            [
                SourcePlan(name, ni, wi, eff, (c / planned) if planned else 0.0, eff, c)
                for name, ni, wi, eff, c in zip(names, n, w, effective, counts, strict=True)
            ],
        )

    if strategy == "temperature" and (temperature is None or temperature <= 0):
        raise ValueError(f"the temperature strategy needs a temperature > 0 (got {temperature!r})")
    capped = [min(ni, cap) if cap is not None else ni for ni in n]
    budget = sum(capped) if total is None else total
    rates = _rate_weights(capped, 1.0 if strategy == "proportional" or temperature is None else float(temperature))
    denominator = sum(rates, Fraction(0))
    if denominator == 0:
        return MixturePlan(
            strategy,
            temperature,
            cap,
            0,
            [
                SourcePlan(name, ni, wi, float(c), 0.0, 0.0, 0)
                for name, ni, wi, c in zip(names, n, w, capped, strict=True)
            ],
        )
    quotas = [budget * r / denominator for r in rates]
    counts = largest_remainder(quotas, budget)
    return MixturePlan(
        strategy,
        temperature if strategy == "temperature" else None,
        cap,
        budget,
        [
            SourcePlan(name, ni, wi, float(c), float(r / denominator), float(q), k)
            for name, ni, wi, c, r, q, k in zip(names, n, w, capped, rates, quotas, counts, strict=True)
        ],
    )


def mix(records: list[InstructionRecord], plan: MixturePlan, rng: random.Random) -> list[InstructionRecord]:
    """Draw each source's count from its records, source after source (the trainer shuffles the batches).

    ``concat`` returns the records untouched. Otherwise a count of ``k`` from ``n`` records is every record
    ``k // n`` times plus ``k % n`` distinct records drawn with ``rng``: no record is repeated more than once
    more than any other of its source."""
    if plan.strategy == "concat":
        return records
    counts = plan.counts()
    by_source: dict[str, list[InstructionRecord]] = defaultdict(list)
    for record in records:
        by_source[record.source].append(record)
    out: list[InstructionRecord] = []
    for name, group in by_source.items():  # the records' order, so the draws follow the recipe's tables
        whole, rest = divmod(counts[name], len(group))
        out.extend(group * whole + rng.sample(group, rest))
    return out


def describe(plan: MixturePlan, encoded: dict[str, dict[str, int]] | None) -> dict[str, Any]:
    """The plan with its rule, and, once the training examples are encoded, what each source contributed.

    ``encoded`` maps a source to its ``examples``, ``tokens`` and ``trainable_tokens`` after the length policy;
    ``trainable_token_share`` is each source's part of the tokens the loss is taken on."""
    sources: dict[str, dict[str, Any]] = {}
    for s in plan.sources:
        entry: dict[str, Any] = {
            "records": s.records,
            "weight": s.weight,
            "effective_size": _round(s.effective_size),
            "target_share": _round(s.share),
            "target_examples": _round(s.target),
            "planned_examples": s.examples,
            "unique_records": min(s.examples, s.records),
        }
        sources[s.name] = entry
    if encoded is not None:
        total_examples = sum(e.get("examples", 0) for e in encoded.values())
        total_trainable = sum(e.get("trainable_tokens", 0) for e in encoded.values())
        for name, entry in sources.items():
            got = encoded.get(name, {})
            examples = got.get("examples", 0)
            entry.update(
                {
                    "examples": examples,
                    "dropped_while_encoding": entry["planned_examples"] - examples,
                    "tokens": got.get("tokens", 0),
                    "trainable_tokens": got.get("trainable_tokens", 0),
                    "example_share": _round(examples / total_examples) if total_examples else 0.0,
                    "trainable_token_share": _round(got.get("trainable_tokens", 0) / total_trainable)
                    if total_trainable
                    else 0.0,
                }
            )
    return {
        "strategy": plan.strategy,
        "temperature": plan.temperature,
        "cap": plan.cap,
        "rule": RULES[plan.strategy],
        "epoch_examples": plan.total,
        "sources": sources,
    }


def _round(value: float) -> float:
    return round(float(value), 6)
