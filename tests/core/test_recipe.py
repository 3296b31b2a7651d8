"""Recipe loading and validation: every problem at once with key paths and did-you-mean, ``--set``
overrides, TOML syntax errors with their line, and defaults."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer
from ift.errors import Problem, RecipeError
from ift.host import PluginHost
from ift.recipe import apply_override, load_recipe, read_toml, validate_recipe

MODEL = {"adapter": "causal-lm", "tokenizer": "byte-level", "from_config": {"model_type": "llama"}}
MINIMAL = {"data": [{"source": "jsonl", "path": "train.jsonl"}], "model": MODEL}


def minimal(**sections: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw.update(sections)
    return raw


def problems_of(raw: dict[str, Any], host: PluginHost) -> list[Problem]:
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw, host, base_dir=Path("."))
    return info.value.problems


def as_pairs(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.key, p.message) for p in problems]


# --- a valid recipe ----------------------------------------------------------------------------


def test_minimal_recipe_gets_defaults(host: PluginHost) -> None:
    recipe = validate_recipe(minimal(), host, base_dir=Path("/recipes"))
    assert recipe.base_dir == Path("/recipes")
    assert (recipe.run.name, recipe.run.seed) == ("run", 42)
    assert recipe.template.name == "alpaca"
    assert recipe.model.cls is CausalLMAdapter
    assert recipe.trainer.cls is SFTTrainer
    assert recipe.trainer_config == SFTConfig()
    assert recipe.eval.metrics == ["loss", "exact_match"]
    [spec] = recipe.data
    assert (spec.name, spec.source_name, spec.weight, spec.split, spec.task) == ("jsonl", "train", 1.0, "auto", None)
    assert spec.config.path == "train.jsonl"  # type: ignore[attr-defined]


def test_resolved_fills_every_default(host: PluginHost) -> None:
    raw = minimal(
        data=[{"source": "jsonl", "path": "a.jsonl", "name": "tickets", "weight": 2, "task": "qa"}],
        trainer={"name": "sft", "epochs": 3},
    )
    resolved = validate_recipe(raw, host, base_dir=Path(".")).resolved()
    assert resolved["data"] == [
        {
            "source": "jsonl",
            "name": "tickets",
            "weight": 2.0,
            "task": "qa",
            "split": "auto",
            "format": "auto",
            "system": None,
            "limit": None,
            "on_bad_rows": "error",
            "max_bad_fraction": 0.01,
            "fields": None,
            "explode": None,
            "path": "a.jsonl",
        }
    ]
    assert resolved["template"] == {
        "name": "alpaca",
        "max_seconds": 2.0,
        "max_chars": 1_000_000,
        "train_on": "all_assistant",
    }
    assert resolved["trainer"]["epochs"] == 3.0
    assert resolved["trainer"]["learning_rate"] == 2e-4
    assert resolved["model"]["adapter"] == "causal-lm"
    assert resolved["overrides"] == []


def test_template_path_alone_selects_the_jinja_renderer(host: PluginHost) -> None:
    recipe = validate_recipe(minimal(template={"path": "mine.jinja"}), host, base_dir=Path("."))
    assert recipe.template.name == "jinja"
    assert recipe.template.config.path == "mine.jinja"  # type: ignore[attr-defined]


def test_default_source_names_come_from_the_path(host: PluginHost) -> None:
    raw = minimal(data=[{"source": "jsonl", "path": "data/my tickets.jsonl"}, {"source": "hf", "dataset": "org/set"}])
    recipe = validate_recipe(raw, host, base_dir=Path("."))
    assert [d.source_name for d in recipe.data] == ["my-tickets", "set"]


# --- every problem at once ---------------------------------------------------------------------


def test_every_problem_is_reported_at_once_with_key_paths(host: PluginHost) -> None:
    raw = minimal(
        data=[
            {"source": "jsnl", "path": "a.jsonl"},
            {"source": "jsonl", "pth": "b.jsonl"},
            {"source": "jsonl", "path": "c.jsonl", "weight": -1},
        ],
        trainer={"name": "sft", "learnig_rate": 1e-4, "epochs": 0},
        trainr={"name": "sft"},
        eval={"metrics": ["exact_mach"]},
    )
    problems = problems_of(raw, host)
    assert as_pairs(problems) == [
        (
            "trainr",
            "unknown section (did you mean 'trainer'?); sections are run, data, mixture, transforms, "
            "template, model, trainer, eval, plugins",
        ),
        (
            "eval.metrics[0]",
            "unknown metric 'exact_mach' (did you mean 'exact_match'?); available: accuracy, "
            "exact_match, f1, loss, perplexity, precision, recall, rouge_l",
        ),
        (
            "data[0].source",
            "unknown source 'jsnl' (did you mean 'jsonl'?); available: " + ", ".join(host.names("source")),
        ),
        ("data[1].path", "required key is missing"),
        ("data[1].pth", "unknown key (did you mean 'path'?)"),
        ("data[2].weight", "must be a positive number (got -1)"),
        ("trainer.epochs", "Input should be greater than 0 (got 0)"),
        ("trainer.learnig_rate", "unknown key (did you mean 'learning_rate'?)"),
    ]


def test_recipe_error_message_lists_every_problem(host: PluginHost) -> None:
    with pytest.raises(RecipeError) as info:
        validate_recipe(
            minimal(trainer={"name": "sft", "learnig_rate": 1}, trainr={}),
            host,
            base_dir=Path("."),
            path=Path("r.toml"),
        )
    assert str(info.value).splitlines() == [
        "r.toml: invalid recipe, 2 problems:",
        "  - trainr: unknown section (did you mean 'trainer'?); sections are run, data, mixture, transforms, "
        "template, model, trainer, eval, plugins",
        "  - trainer.learnig_rate: unknown key (did you mean 'learning_rate'?)",
    ]
    assert info.value.exit_code == 2


def test_missing_and_misshapen_data(host: PluginHost) -> None:
    assert as_pairs(problems_of({"model": MODEL}, host)) == [("data", "at least one [[data]] table is required")]
    assert as_pairs(problems_of({"data": {"source": "jsonl"}, "model": MODEL}, host)) == [
        ("data", "must be an array of tables: write [[data]], not [data]")
    ]
    assert as_pairs(problems_of(minimal(data=[{"path": "a.jsonl"}]), host)) == [
        ("data[0].source", f"required: the source's name; available: {', '.join(host.names('source'))}")
    ]


def test_duplicate_source_names_and_bad_split(host: PluginHost) -> None:
    raw = minimal(
        data=[{"source": "jsonl", "path": "a/x.jsonl"}, {"source": "jsonl", "path": "b/x.jsonl", "split": "test"}]
    )
    assert as_pairs(problems_of(raw, host)) == [
        ("data[1].split", "must be 'auto', 'train' or 'eval' (got 'test')"),
        ("data[1].name", "'x' is already the name of data[0]; give each table a distinct name"),
    ]


def test_nothing_to_train_or_evaluate(host: PluginHost) -> None:
    raw = minimal(data=[{"source": "jsonl", "path": "a.jsonl", "split": "eval"}])
    assert as_pairs(problems_of(raw, host)) == [
        ("data", "every [[data]] table has split = 'eval': nothing to train on")
    ]
    raw = minimal(eval={"fraction": 0})
    assert [p.key for p in problems_of(raw, host)] == ["eval.fraction"]
    validate_recipe(minimal(eval={"fraction": 0, "metrics": []}), host, base_dir=Path("."))


def test_model_config_is_validated_by_the_adapter(host: PluginHost) -> None:
    raw = minimal(
        model={
            "adapter": "causal-lm",
            "name_or_path": "x",
            "from_config": {"model_type": "llama"},
            "tokenizer": "byte-level",
        }
    )
    [problem] = problems_of(raw, host)
    assert problem.key == "model"
    assert "set exactly one of name_or_path (a pretrained model) or from_config" in problem.message


def test_unknown_component_names_in_every_section(host: PluginHost) -> None:
    raw = minimal(
        template={"name": "chatm"},
        model={"adapter": "causal"},
        trainer={"name": "ppo"},
        transforms=[{"name": "dedupe"}],
    )
    assert [(p.key, p.message.split(";")[0]) for p in problems_of(raw, host)] == [
        ("transforms[0].name", "unknown transform 'dedupe' (did you mean 'dedup'?)"),
        ("template.name", "unknown template renderer 'chatm' (did you mean 'chatml'?)"),
        ("model.adapter", "unknown model adapter 'causal' (did you mean 'causal-lm'?)"),
        ("trainer.name", "unknown trainer 'ppo' (did you mean 'dpo'?)"),
    ]


def test_a_section_that_is_not_a_table_is_a_recipe_error(host: PluginHost) -> None:
    problems = problems_of(minimal(template="chatml", trainer=["sft"]), host)
    assert as_pairs(problems) == [("template", "must be a table, got str"), ("trainer", "must be a table, got list")]


def test_unknown_nested_key_gets_did_you_mean(host: PluginHost) -> None:
    model = {**MODEL, "peft": {"method": "lora", "alpah": 8}}
    assert as_pairs(problems_of(minimal(model=model), host)) == [
        ("model.peft.alpah", "unknown key (did you mean 'alpha'?)")
    ]


def test_eval_problems_and_unknown_metrics_are_reported_together(host: PluginHost) -> None:
    problems = problems_of(minimal(eval={"fraction": 2, "metrics": ["exact_mach"]}), host)
    assert [p.key for p in problems] == ["eval.fraction", "eval.metrics[0]"]


def test_list_item_key_paths_use_brackets(host: PluginHost) -> None:
    problems = problems_of(minimal(eval={"metrics": [1]}), host)
    assert [p.key for p in problems] == ["eval.metrics[0]"]


def test_trainer_table_without_name_defaults_to_sft(host: PluginHost) -> None:
    raw = minimal()
    apply_override(raw, "trainer.epochs=2")
    recipe = validate_recipe(raw, host, base_dir=Path("."))
    assert recipe.trainer.name == "sft"
    assert recipe.trainer.config.epochs == 2  # type: ignore[attr-defined]


# --- overrides ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "path", "value"),
    [
        ("trainer.epochs=2", ("trainer", "epochs"), 2),
        ("trainer.learning_rate=2e-4", ("trainer", "learning_rate"), 2e-4),
        ("data[0].path=x", ("data", 0, "path"), "x"),
        ("data.0.path=x", ("data", 0, "path"), "x"),
        ("data[0].path=data/new file.jsonl", ("data", 0, "path"), "data/new file.jsonl"),
        ('data[0].path="quoted"', ("data", 0, "path"), "quoted"),
        ("eval.baseline=false", ("eval", "baseline"), False),
        ('eval.metrics=["loss", "rouge_l"]', ("eval", "metrics"), ["loss", "rouge_l"]),
        ("model.peft.r=8", ("model", "peft", "r"), 8),
        ("run.seed= 7", ("run", "seed"), 7),
    ],
)
def test_apply_override(assignment: str, path: tuple[Any, ...], value: Any) -> None:
    raw = {"data": [{"source": "jsonl", "path": "a.jsonl"}], "trainer": {"name": "sft"}}
    apply_override(raw, assignment)
    node: Any = raw
    for part in path:
        node = node[part]
    assert node == value
    assert raw["data"][0]["source"] == "jsonl"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("trainer.epochs", "invalid recipe: --set 'trainer.epochs': expected KEY=VALUE"),
        ("=3", "invalid recipe: --set '=3': empty key"),
        ("data[1].path=x", "invalid recipe: --set data[1].path: index 1 is out of range (data has 1 item(s))"),
        ("data.3=x", "invalid recipe: --set data.3: index 3 is out of range (data has 1 item(s))"),
    ],
)
def test_bad_overrides(assignment: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        apply_override({"data": [{"source": "jsonl"}]}, assignment)
    assert str(info.value) == message


def test_override_through_a_scalar_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError):
        apply_override({"trainer": {"epochs": 1}}, "trainer.epochs.x=1")


def test_load_recipe_applies_overrides_and_keeps_them(host: PluginHost, tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(
        '[[data]]\nsource = "jsonl"\npath = "train.jsonl"\n\n'
        '[model]\nadapter = "causal-lm"\ntokenizer = "byte-level"\nfrom_config = { model_type = "llama" }\n\n'
        '[trainer]\nname = "sft"\nepochs = 1\n'
    )
    recipe = load_recipe(path, host, ["trainer.epochs=2", "data.0.path=other.jsonl"])
    assert recipe.trainer.config.epochs == 2.0  # type: ignore[attr-defined]
    assert recipe.data[0].config.path == "other.jsonl"  # type: ignore[attr-defined]
    assert recipe.overrides == ["trainer.epochs=2", "data.0.path=other.jsonl"]
    assert recipe.base_dir == tmp_path
    assert recipe.text == path.read_text()


# --- TOML --------------------------------------------------------------------------------------


def test_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[run]\nname = "x"\nseed = = 3\n')
    with pytest.raises(RecipeError) as info:
        read_toml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid recipe: not valid TOML: ")
    assert "line 3" in message


def test_unreadable_recipe(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        read_toml(tmp_path / "absent.toml")
    assert (
        str(info.value) == f"{tmp_path / 'absent.toml'}: invalid recipe: cannot read recipe: No such file or directory"
    )


def test_secrets_in_a_recipe_are_refused(host, tmp_path):
    from ift.recipe import validate_recipe

    raw = {
        "data": [{"source": "hf", "dataset": "org/set", "revision": "hf_" + "a1" * 20}],
        "model": {"adapter": "causal-lm", "name_or_path": "https://user:pa55@example.com/model"},
        "plugins": {"local": []},
    }
    with pytest.raises(ift.RecipeError) as err:
        validate_recipe(raw, host, base_dir=tmp_path)
    keys = [p.key for p in err.value.problems if "looks like a secret" in p.message]
    assert keys == ["data[0].revision", "model.name_or_path"]
    assert "HF_TOKEN" in str(err.value)
    assert "a1a1" not in str(err.value) and "pa55" not in str(err.value)  # the values are never echoed


def test_component_given_as_import_path_is_refused(host, tmp_path):
    from ift.recipe import validate_recipe

    raw = {"data": [{"source": "mypkg.sources:CsvSource", "path": "x"}], "trainer": {"name": "my.trainers.Fancy"}}
    with pytest.raises(ift.RecipeError) as err:
        validate_recipe(raw, host, base_dir=tmp_path)
    messages = {p.key: p.message for p in err.value.problems}
    assert "looks like an import path" in messages["data[0].source"]
    assert "looks like an import path" in messages["trainer.name"]


# --- [mixture] ---------------------------------------------------------------------------------


def two_tables(*weights: float) -> list[dict[str, Any]]:
    return [{"source": "jsonl", "path": f"{name}.jsonl", "weight": w} for name, w in zip("ab", weights, strict=True)]


def test_mixture_strategy_defaults_to_what_the_weights_meant(host: PluginHost) -> None:
    recipe = validate_recipe(minimal(data=two_tables(1, 1)), host, base_dir=Path("."))
    assert recipe.mixture.strategy == "concat"
    assert recipe.resolved()["mixture"] == {"strategy": "concat", "temperature": None, "cap": None, "total": None}
    recipe = validate_recipe(minimal(data=two_tables(2, 1)), host, base_dir=Path("."))
    assert recipe.resolved()["mixture"]["strategy"] == "weighted"
    recipe = validate_recipe(
        minimal(
            data=two_tables(1, 1), mixture={"strategy": "temperature", "temperature": 2, "cap": 1000, "total": 500}
        ),
        host,
        base_dir=Path("."),
    )
    assert recipe.resolved()["mixture"] == {"strategy": "temperature", "temperature": 2.0, "cap": 1000, "total": 500}


def test_mixture_problems_are_reported_together_with_key_paths(host: PluginHost) -> None:
    raw = minimal(data=two_tables(1, 1), mixture={"stratgy": "temperature", "temprature": 2, "cap": 0, "total": 1.5})
    assert as_pairs(problems_of(raw, host)) == [
        ("mixture.cap", "Input should be greater than 0 (got 0)"),
        ("mixture.total", "Input should be a valid integer, got a number with a fractional part (got 1.5)"),
        ("mixture.stratgy", "unknown key (did you mean 'strategy'?)"),
        ("mixture.temprature", "unknown key (did you mean 'temperature'?)"),
    ]
    assert as_pairs(problems_of(minimal(mixture={"strategy": "temprature"}), host)) == [
        (
            "mixture.strategy",
            "unknown strategy 'temprature' (did you mean 'temperature'?); strategies are concat, "
            "proportional, weighted, temperature",
        )
    ]
    assert as_pairs(problems_of(minimal(mixture={"strategy": "temperature", "temperature": -1}), host)) == [
        ("mixture.temperature", "Input should be greater than 0 (got -1)")
    ]
    assert as_pairs(problems_of(minimal(mixture="temperature"), host)) == [("mixture", "must be a table, got str")]


def test_mixture_keys_must_fit_the_strategy(host: PluginHost) -> None:
    assert as_pairs(problems_of(minimal(mixture={"strategy": "temperature"}), host)) == [
        (
            "mixture.temperature",
            "required by strategy 'temperature': e.g. 2.0 (1 gives the proportional shares; "
            "larger values move the shares toward equal)",
        )
    ]
    assert as_pairs(problems_of(minimal(data=two_tables(1, 1), mixture={"temperature": 2.0, "total": 10}), host)) == [
        (
            "mixture.temperature",
            "is not used by mixture.strategy = 'concat' (the default for these weights); only "
            "strategy 'temperature' reads it",
        ),
        (
            "mixture.total",
            "is not used by mixture.strategy = 'concat' (the default for these weights); only "
            "strategies 'proportional' and 'temperature' read it",
        ),
    ]
    assert as_pairs(problems_of(minimal(data=two_tables(2, 1), mixture={"total": 10}), host)) == [
        (
            "mixture.total",
            "is not used by mixture.strategy = 'weighted' (the default for these weights); only "
            "strategies 'proportional' and 'temperature' read it",
        )
    ]
    assert as_pairs(problems_of(minimal(mixture={"strategy": "concat", "cap": 5}), host)) == [
        (
            "mixture.cap",
            "is not used by mixture.strategy = 'concat'; only strategies 'proportional', 'weighted' "
            "and 'temperature' read it",
        )
    ]


def test_weights_outside_the_weighted_strategy_are_refused(host: PluginHost) -> None:
    raw = minimal(data=two_tables(0.5, 3), mixture={"strategy": "temperature", "temperature": 2.0})
    assert as_pairs(problems_of(raw, host)) == [
        (
            "data[0].weight",
            "is 0.5, but mixture.strategy = 'temperature' sets the shares from source sizes; only "
            "strategy 'weighted' reads weights",
        ),
        (
            "data[1].weight",
            "is 3, but mixture.strategy = 'temperature' sets the shares from source sizes; only "
            "strategy 'weighted' reads weights",
        ),
    ]
    raw = minimal(data=two_tables(1, 2), mixture={"strategy": "concat"})
    assert as_pairs(problems_of(raw, host)) == [
        (
            "data[1].weight",
            "is 2, but mixture.strategy = 'concat' uses every record once; only strategy 'weighted' reads weights",
        )
    ]
    recipe = validate_recipe(
        minimal(data=two_tables(1, 2), mixture={"strategy": "weighted", "cap": 100}), host, base_dir=Path(".")
    )
    assert (recipe.mixture.strategy, recipe.mixture.cap, [d.weight for d in recipe.data]) == (
        "weighted",
        100,
        [1.0, 2.0],
    )
