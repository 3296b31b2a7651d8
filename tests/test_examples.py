"""Every shipped example recipe validates, and the quickstart's held-out split never leaks into training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.data import DataReport, apply_transforms, read_sources, split_records
from ift.host import PluginHost
from ift.recipe import load_recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def builtin_host() -> PluginHost:
    return PluginHost(entry_points=False)


@pytest.mark.parametrize("recipe", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_recipe_is_valid(recipe: Path, builtin_host: PluginHost):
    parsed = load_recipe(recipe, builtin_host)
    assert parsed.data


def test_quickstart_eval_split_is_disjoint_from_training(builtin_host: PluginHost):
    recipe = load_recipe(EXAMPLES / "tiny.toml", builtin_host)
    report = DataReport()
    records = apply_transforms(recipe, builtin_host, read_sources(recipe, builtin_host, report), report)
    train, held = split_records(recipe, records, report)
    assert len(held) == 100 and len(train) + len(held) == len(records)
    train_prompts = {r.messages[0].content for r in train}
    assert not any(r.messages[0].content in train_prompts for r in held)
    assert not {r.id for r in train} & {r.id for r in held}
    # every task is represented in the held-out split
    assert {r.task for r in held} == {"uppercase", "reverse", "first-letter", "last-letter", "repeat"}


def test_quickstart_data_is_what_the_generator_writes(tmp_path: Path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_quickstart", EXAMPLES / "data" / "make_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "__file__", str(tmp_path / "make_quickstart.py"))
    module.main()
    assert (tmp_path / "quickstart.jsonl").read_text() == (EXAMPLES / "data" / "quickstart.jsonl").read_text()
    first = json.loads((EXAMPLES / "data" / "quickstart.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "task", "instruction", "input", "output"}


def test_mixture_example_mixes_with_the_temperature_shares_its_comment_states(builtin_host: PluginHost):
    recipe = load_recipe(EXAMPLES / "mixture.toml", builtin_host)
    assert (recipe.mixture.strategy, recipe.mixture.temperature, recipe.mixture.cap, recipe.mixture.total) == (
        "temperature",
        3.0,
        4000,
        3000,
    )
    report = DataReport()
    records = apply_transforms(recipe, builtin_host, read_sources(recipe, builtin_host, report), report)
    train, held = split_records(recipe, records, report)
    sources = report.to_dict()["mixture"]["sources"]
    assert {name: s["records"] for name, s in sources.items()} == {"strings": 19800, "words": 320, "colours": 11}
    assert {name: round(s["target_share"], 3) for name, s in sources.items()} == {
        "strings": 0.637,
        "words": 0.274,
        "colours": 0.089,
    }
    assert {name: s["planned_examples"] for name, s in sources.items()} == {
        "strings": 1910,
        "words": 823,
        "colours": 267,
    }
    assert len(train) == 3000 and {r.source for r in held} == {"strings", "words", "colours"}
    assert not {r.id for r in train} & {r.id for r in held}


def _load_generator(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "data" / "support" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _phrasing_pattern(phrasing: str):
    import re

    # a slot stands for any text; the message may carry a greeting before and a sign-off after, may be typed
    # in lower case and may have lost its final punctuation
    body = re.escape(phrasing.rstrip(".!?。！？")).replace(r"\{order\}", ".+?").replace(r"\{product\}", ".+?")
    body = body.replace(r"\{when\}", ".+?")
    return re.compile(body, re.IGNORECASE)


@pytest.mark.parametrize(
    ("recipe_name", "generator", "files"),
    [
        ("smollm2-support.toml", "make_support", ("train.jsonl", "test.jsonl")),
        ("smollm2-support-zh.toml", "make_support_zh", ("train_zh.jsonl", "test_zh.jsonl")),
    ],
)
def test_support_held_out_wordings_never_occur_in_training(
    recipe_name: str, generator: str, files: tuple[str, str], builtin_host: PluginHost, tmp_path: Path, monkeypatch
):
    module = _load_generator(generator)
    if hasattr(module, "EXTRA_PHRASINGS"):  # the English file adds its own wordings to the classifier example's
        phrasings = {k: v + module.EXTRA_PHRASINGS[k] for k, v in module._intents_module().PHRASINGS.items()}
    else:
        phrasings = module.PHRASINGS
    recipe = load_recipe(EXAMPLES / recipe_name, builtin_host)
    report = DataReport()
    records = apply_transforms(recipe, builtin_host, read_sources(recipe, builtin_host, report), report)
    train, held = split_records(recipe, records, report)
    assert len(held) >= 100 and len(train) >= 400
    held_patterns = {intent: [_phrasing_pattern(p) for p in ps[3::4]] for intent, ps in phrasings.items()}
    seen_patterns = {
        intent: [_phrasing_pattern(p) for p in ps if p not in ps[3::4]] for intent, ps in phrasings.items()
    }
    every_held = [p for ps in held_patterns.values() for p in ps]
    for record in held:
        message = record.messages[1].content  # [0] is the recipe's system prompt
        assert any(p.search(message) for p in held_patterns[record.task]), message
    for record in train:
        message = record.messages[1].content
        assert not any(p.search(message) for p in every_held), message
        assert any(p.search(message) for p in seen_patterns[record.task]), message
    # the files are what the generator writes
    monkeypatch.setattr(module, "__file__", str(tmp_path / f"{generator}.py"))
    module.main()
    for name in files:
        assert (tmp_path / name).read_text(encoding="utf-8") == (EXAMPLES / "data" / "support" / name).read_text(
            encoding="utf-8"
        )
