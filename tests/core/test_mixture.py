"""Multi-task mixtures: each strategy's counts per source against its rule (computed here independently),
caps, temperature limits (T = 1 is proportional, large T is equal), seeded draws, the eval split staying
free of repeats, and the arithmetic and per-source contributions in the report.

Tolerance: every count is within one example of its unrounded target, and the counts of ``proportional`` and
``temperature`` sum to exactly the total (largest-remainder rounding); ``concat`` and ``weighted`` are exact.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ift.config import TrainerConfig
from ift.data import DataReport, encode_records, split_records
from ift.mixture import largest_remainder, mix, plan_mixture
from ift.records import InstructionRecord, Message

MakeRecipe = Callable[..., Any]

SIZE_SETS = [
    {"a": 900, "b": 90, "c": 10},
    {"a": 7, "b": 3},
    {"big": 20_000, "mid": 333, "small": 11, "tiny": 1},
    {"x": 50, "y": 50, "z": 49},
]


def rec(source: str, i: int, long: bool = False) -> InstructionRecord:
    question = f"{source} question {i}" + (" and more" * 10 if long else "")
    return InstructionRecord(f"{source}-{i}", source, [Message("user", question), Message("assistant", f"answer {i}")])


def table(name: str, **extra: Any) -> dict[str, Any]:
    return {"source": "jsonl", "path": f"{name}.jsonl", "name": name, **extra}


def assert_close_to(counts: dict[str, int], targets: dict[str, float]) -> None:
    for name, target in targets.items():
        assert abs(counts[name] - target) < 1, (name, counts[name], target)


# --- the arithmetic ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", SIZE_SETS)
def test_concat_takes_every_record_once(sizes: dict[str, int]) -> None:
    plan = plan_mixture(sizes, strategy="concat")
    assert plan.counts() == sizes
    assert plan.total == sum(sizes.values())
    assert [round(s.share, 9) for s in plan.sources] == [round(n / sum(sizes.values()), 9) for n in sizes.values()]


@pytest.mark.parametrize("sizes", SIZE_SETS)
@pytest.mark.parametrize("total", [None, 10, 1000, 12_345])
def test_proportional_counts_follow_source_sizes(sizes: dict[str, int], total: int | None) -> None:
    plan = plan_mixture(sizes, strategy="proportional", total=total)
    n = sum(sizes.values())
    budget = n if total is None else total
    assert sum(plan.counts().values()) == plan.total == budget
    assert_close_to(plan.counts(), {k: budget * v / n for k, v in sizes.items()})
    if total is None:
        assert plan.counts() == sizes  # without a total, proportional is every record once


def test_proportional_is_exact_when_the_total_divides() -> None:
    plan = plan_mixture({"a": 600, "b": 300, "c": 100}, strategy="proportional", total=50)
    assert plan.counts() == {"a": 30, "b": 15, "c": 5}
    assert [s.share for s in plan.sources] == [0.6, 0.3, 0.1]


@pytest.mark.parametrize("sizes", SIZE_SETS)
def test_cap_limits_a_source_in_the_proportional_rate(sizes: dict[str, int]) -> None:
    cap = 40
    plan = plan_mixture(sizes, strategy="proportional", cap=cap)
    assert plan.counts() == {k: min(v, cap) for k, v in sizes.items()}  # no total: each source min(n, K)
    capped = {k: min(v, cap) for k, v in sizes.items()}
    plan = plan_mixture(sizes, strategy="proportional", cap=cap, total=500)
    assert sum(plan.counts().values()) == 500
    assert_close_to(plan.counts(), {k: 500 * v / sum(capped.values()) for k, v in capped.items()})


@pytest.mark.parametrize(
    "weights, cap, expected",
    [
        ({"a": 2.0, "b": 0.5, "c": 1.0}, None, {"a": 1800, "b": 45, "c": 10}),
        ({"a": 0.1, "b": 3.0, "c": 25.0}, None, {"a": 90, "b": 270, "c": 250}),
        ({"a": 2.0, "b": 0.5, "c": 25.0}, 100, {"a": 100, "b": 45, "c": 100}),  # the cap is a hard cap
        ({"a": 0.333, "b": 0.333, "c": 0.25}, None, {"a": 300, "b": 30, "c": 2}),  # round(2.5) = 2, as before
    ],
)
def test_weighted_counts_are_weight_times_size_capped(
    weights: dict[str, float], cap: int | None, expected: dict[str, int]
) -> None:
    sizes = {"a": 900, "b": 90, "c": 10}
    plan = plan_mixture(sizes, strategy="weighted", weights=weights, cap=cap)
    assert plan.counts() == expected
    assert plan.total == sum(expected.values())
    if cap is not None:
        assert max(plan.counts().values()) <= cap


def _temperature_targets(
    sizes: dict[str, int], temperature: float, total: int, cap: int | None = None
) -> dict[str, float]:
    """The rule written out directly in floating point, independently of the code under test."""
    rates = {k: min(v, cap or v) ** (1 / temperature) for k, v in sizes.items()}
    return {k: total * r / sum(rates.values()) for k, r in rates.items()}


@pytest.mark.parametrize("sizes", SIZE_SETS)
@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.0, 10.0])
@pytest.mark.parametrize("total", [None, 100, 5000])
def test_temperature_counts_follow_the_t5_rule(sizes: dict[str, int], temperature: float, total: int | None) -> None:
    plan = plan_mixture(sizes, strategy="temperature", temperature=temperature, total=total)
    budget = sum(sizes.values()) if total is None else total
    assert sum(plan.counts().values()) == budget
    targets = _temperature_targets(sizes, temperature, budget)
    assert_close_to(plan.counts(), targets)
    assert [s.target for s in plan.sources] == pytest.approx(list(targets.values()), rel=1e-9)


def test_temperature_with_a_cap_counts_large_sources_as_k() -> None:
    sizes = {"big": 20_000, "huge": 100_000, "small": 100}
    plan = plan_mixture(sizes, strategy="temperature", temperature=2.0, cap=2500, total=1000)
    counts = plan.counts()
    assert plan.sources[0].share == plan.sources[1].share  # both count as K = 2500
    assert (counts["big"], counts["huge"]) == (455, 454)  # 454.6 each: the tie's extra unit goes to the first
    assert_close_to(counts, _temperature_targets(sizes, 2.0, 1000, cap=2500))
    assert [s.effective_size for s in plan.sources] == [2500, 2500, 100]
    # without a total, the epoch is sum(min(n, K)) and no source exceeds K
    plan = plan_mixture(sizes, strategy="temperature", temperature=2.0, cap=2500)
    assert plan.total == 5100 and max(plan.counts().values()) <= 2500


@pytest.mark.parametrize("sizes", SIZE_SETS)
@pytest.mark.parametrize("total", [None, 77, 4000])
def test_temperature_one_is_proportional(sizes: dict[str, int], total: int | None) -> None:
    for cap in (None, 60):
        t1 = plan_mixture(sizes, strategy="temperature", temperature=1.0, cap=cap, total=total)
        prop = plan_mixture(sizes, strategy="proportional", cap=cap, total=total)
        assert t1.counts() == prop.counts()
        assert [s.share for s in t1.sources] == [s.share for s in prop.sources]


def test_temperature_one_draws_the_same_records_as_proportional(make_recipe: MakeRecipe) -> None:
    records = [rec("a", i) for i in range(50)] + [rec("b", i) for i in range(8)]
    t1 = _train_ids(make_recipe, records, mixture={"strategy": "temperature", "temperature": 1.0, "total": 90})
    prop = _train_ids(make_recipe, records, mixture={"strategy": "proportional", "total": 90})
    assert t1 == prop and len(t1) == 90


def test_large_temperature_approaches_equal_shares() -> None:
    sizes = {"big": 20_000, "mid": 333, "small": 11, "tiny": 1}
    shares = [
        plan_mixture(sizes, strategy="temperature", temperature=t, total=1000).sources[0].share
        for t in (1.0, 2.0, 5.0, 50.0, 1e6)
    ]
    assert shares == sorted(shares, reverse=True)  # the largest source's share falls as T grows
    for t in (1e6, math.inf):
        counts = plan_mixture(sizes, strategy="temperature", temperature=t, total=1000).counts()
        assert counts == {"big": 250, "mid": 250, "small": 250, "tiny": 250}
    counts = plan_mixture(sizes, strategy="temperature", temperature=math.inf, total=10).counts()
    assert sorted(counts.values()) == [2, 2, 3, 3]


def test_sources_without_training_records_get_nothing() -> None:
    plan = plan_mixture({"a": 10, "empty": 0}, strategy="temperature", temperature=math.inf, total=10)
    assert plan.counts() == {"a": 10, "empty": 0}
    assert plan_mixture({"e": 0}, strategy="proportional", total=5).counts() == {"e": 0}


def test_largest_remainder_sums_exactly_and_breaks_ties_by_order() -> None:
    quotas = [Fraction(10, 3)] * 3
    assert largest_remainder(quotas, 10) == [4, 3, 3]
    assert largest_remainder([Fraction(5, 2), Fraction(27, 10), Fraction(48, 10)], 10) == [2, 3, 5]


# --- drawing records ---------------------------------------------------------------------------------


def test_mix_repeats_whole_passes_then_draws_distinct_records() -> None:
    records = [rec("a", i) for i in range(10)] + [rec("b", i) for i in range(4)]
    plan = plan_mixture({"a": 10, "b": 4}, strategy="weighted", weights={"a": 0.5, "b": 2.75})
    mixed = mix(records, plan, random.Random(0))
    per_record = Counter(r.id for r in mixed)
    assert sum(1 for r in mixed if r.source == "a") == 5
    assert {v for k, v in per_record.items() if k.startswith("a-")} == {1}  # a subset, no repeats
    b_counts = sorted(v for k, v in per_record.items() if k.startswith("b-"))
    assert b_counts == [2, 3, 3, 3]  # 11 = 4 * 2 + 3 distinct extra draws


def _train_ids(make_recipe: MakeRecipe, records: list[InstructionRecord], **sections: Any) -> list[str]:
    recipe = make_recipe([table("a"), table("b")], **sections)
    train, held = split_records(recipe, list(records), DataReport())
    return [r.id for r in train]


def test_mixing_is_seeded_by_the_data_seed(make_recipe: MakeRecipe) -> None:
    records = [rec("a", i) for i in range(60)] + [rec("b", i) for i in range(7)]
    mixture = {"strategy": "temperature", "temperature": 2.0, "total": 40}
    first = _train_ids(make_recipe, records, mixture=mixture, run={"seed": 1, "data_seed": 5})
    assert first == _train_ids(make_recipe, records, mixture=mixture, run={"seed": 2, "data_seed": 5})
    assert first != _train_ids(make_recipe, records, mixture=mixture, run={"seed": 1, "data_seed": 6})
    # 54 and 6 training records after the eval split: sqrt(54) : sqrt(6) = 3 : 1 of 40
    assert Counter(i.split("-")[0] for i in first) == {"a": 30, "b": 10}


def test_eval_split_is_taken_before_mixing_and_never_repeats(make_recipe: MakeRecipe) -> None:
    records = [rec("a", i) for i in range(200)] + [rec("b", i) for i in range(10)]
    recipe = make_recipe(
        [table("a"), table("b")],
        eval={"fraction": 0.1},
        mixture={"strategy": "temperature", "temperature": 5.0, "total": 300},
    )
    report = DataReport()
    train, held = split_records(recipe, records, report)
    held_ids = [r.id for r in held]
    assert len(held_ids) == len(set(held_ids)) == 21  # 20 of a, 1 of b
    assert not set(held_ids) & {r.id for r in train}
    counts = Counter(r.source for r in train)
    assert counts == report.split["weighted_train"]
    assert_close_to(counts, _temperature_targets({"a": 180, "b": 9}, 5.0, 300))  # 193.6 and 106.4
    assert len({r.id for r in train if r.source == "b"}) == 9  # every training record of b, ~12 times each


def test_default_strategy_keeps_weighted_recipes_as_they_were(make_recipe: MakeRecipe) -> None:
    records = [rec("a", i) for i in range(6)] + [rec("b", i) for i in range(5)]
    recipe = make_recipe([table("a", weight=2), table("b", weight=0.6)], eval={"fraction": 0, "metrics": []})
    assert recipe.mixture.strategy == "weighted"
    train, _ = split_records(recipe, records, DataReport())
    assert Counter(r.source for r in train) == {"a": 12, "b": 3}
    recipe = make_recipe([table("a"), table("b")], eval={"fraction": 0, "metrics": []})
    assert recipe.mixture.strategy == "concat"
    assert split_records(recipe, records, DataReport())[0] == records


# --- the report --------------------------------------------------------------------------------------


def test_report_explains_the_mixture_and_each_sources_contribution(make_recipe: MakeRecipe, tmp_path: Path) -> None:
    records = [rec("a", i) for i in range(30)] + [rec("b", i) for i in range(3)]
    recipe = make_recipe(
        [table("a"), table("b")],
        eval={"fraction": 0, "metrics": []},
        mixture={"strategy": "proportional", "cap": 12, "total": 20},
    )
    report = DataReport()
    train, _ = split_records(recipe, records, report)
    mixture = report.to_dict()["mixture"]
    assert {k: mixture[k] for k in ("strategy", "temperature", "cap", "epoch_examples")} == {
        "strategy": "proportional",
        "temperature": None,
        "cap": 12,
        "epoch_examples": 20,
    }
    assert mixture["rule"].startswith("share_i = min(n_i, cap) / sum_j min(n_j, cap)")
    assert mixture["sources"]["a"] == {
        "records": 30,
        "weight": 1.0,
        "effective_size": 12.0,
        "target_share": 0.8,
        "target_examples": 16.0,
        "planned_examples": 16,
        "unique_records": 16,
    }
    assert mixture["sources"]["b"]["planned_examples"] == 4 and mixture["sources"]["b"]["unique_records"] == 3

    # encoding drops b's over-long example (each of its copies); the contribution is what is trained on
    tokenizer, renderer, adapter = encoding_parts(tmp_path)
    train = [r if r.id != "b-0" else rec("b", 0, long=True) for r in train]
    examples, _ = encode_records(
        train, renderer, adapter, tokenizer, TrainerConfig(max_length=60, overlong="drop"), "train", report
    )
    sources = report.to_dict()["mixture"]["sources"]
    for name in ("a", "b"):
        mine = [e for e in examples if e.source == name]
        assert sources[name]["examples"] == len(mine)
        assert sources[name]["tokens"] == sum(len(e.input_ids) for e in mine)
        assert sources[name]["trainable_tokens"] == sum(e.trainable_tokens for e in mine)
    dropped_b = sum(1 for r in train if r.id == "b-0")
    assert dropped_b >= 1
    assert sources["a"]["dropped_while_encoding"] == 0
    assert sources["b"]["dropped_while_encoding"] == dropped_b == 4 - sources["b"]["examples"]
    assert sources["a"]["example_share"] == round(16 / (20 - dropped_b), 6)
    trainable = {n: sources[n]["trainable_tokens"] for n in ("a", "b")}
    assert sources["b"]["trainable_token_share"] == round(trainable["b"] / sum(trainable.values()), 6)
    assert sum(trainable.values()) == report.encoding["train"]["trainable_tokens"]


def encoding_parts(tmp_path: Path) -> tuple[Any, Any, Any]:
    from ift.builtin_plugins.causal_lm import CausalLMAdapter
    from ift.builtin_plugins.renderers import ChatMLRenderer

    adapter = CausalLMAdapter(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config={"model_type": "llama"}), base_dir=tmp_path
    )
    tokenizer = adapter.load_tokenizer()
    renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tokenizer)
    return tokenizer, renderer, adapter


# --- a whole run -------------------------------------------------------------------------------------

TINY_MODEL = (
    '{ model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, '
    "num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 128 }"
)


def _write_run_recipe(folder: Path) -> Path:
    import json

    for name, size in (("big", 40), ("small", 6)):
        rows = [{"instruction": f"Upper-case the {name} word {i}: w{i}x", "output": f"W{i}X"} for i in range(size)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = folder / "recipe.toml"
    recipe.write_text(f"""
[run]
name = "mixture"
seed = 3

[[data]]
source = "jsonl"
path = "big.jsonl"

[[data]]
source = "jsonl"
path = "small.jsonl"

[mixture]
strategy = "temperature"
temperature = 2.0
total = 20

[template]
name = "plain"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = {TINY_MODEL}

[trainer]
name = "sft"
max_steps = 2
batch_size = 4
max_length = 96

[eval]
fraction = 0.1
metrics = ["loss"]
baseline = false
""")
    return recipe


@pytest.mark.slow
def test_a_run_records_the_mixture_in_manifest_and_metrics(tmp_path: Path) -> None:
    import json

    from ift.cli import main

    recipe = _write_run_recipe(tmp_path)
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "a")]) == 0
    manifest = json.loads((tmp_path / "a/manifest.json").read_text())
    metrics = json.loads((tmp_path / "a/metrics.json").read_text())
    mixture = manifest["data"]["mixture"]
    assert metrics["data"]["mixture"] == mixture  # next to metrics["final"]["per_source"]
    assert set(metrics["final"]["per_source"]) == set(mixture["sources"]) == {"big", "small"}
    assert (mixture["strategy"], mixture["temperature"], mixture["epoch_examples"]) == ("temperature", 2.0, 20)

    big, small = mixture["sources"]["big"], mixture["sources"]["small"]
    assert (big["records"], small["records"]) == (36, 5)  # 4 and 1 held out first
    targets = _temperature_targets({"big": 36, "small": 5}, 2.0, 20)  # 14.57 and 5.43
    assert (big["target_examples"], small["target_examples"]) == pytest.approx((targets["big"], targets["small"]))
    assert (big["planned_examples"], small["planned_examples"]) == (15, 5)
    assert (big["examples"], small["examples"]) == (15, 5)  # nothing dropped by the length policy
    assert (big["unique_records"], small["unique_records"]) == (15, 5)
    encoding = manifest["data"]["encoding"]["train"]
    assert big["tokens"] + small["tokens"] == encoding["tokens"]
    assert big["trainable_tokens"] + small["trainable_tokens"] == encoding["trainable_tokens"]
    assert big["trainable_token_share"] + small["trainable_token_share"] == pytest.approx(1.0, abs=2e-6)

    train = [json.loads(line) for line in (tmp_path / "a/data/train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (tmp_path / "a/data/eval.jsonl").read_text().splitlines()]
    assert Counter(r["source"] for r in train) == {"big": 15, "small": 5}
    assert len({r["id"] for r in held}) == len(held) == 5
    assert not {r["id"] for r in held} & {r["id"] for r in train}

    # another mixture is other prepared data: the cache key changes, and the counts with it
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "b"), "--set", "mixture.temperature=1.0"]) == 0
    other = json.loads((tmp_path / "b/manifest.json").read_text())
    assert other["cache"]["hit"] is False and other["cache"]["key"] != manifest["cache"]["key"]
    sources = other["data"]["mixture"]["sources"]
    assert (sources["big"]["examples"], sources["small"]["examples"]) == (18, 2)  # 20 * 36/41, 20 * 5/41
