"""Early stopping and best-checkpoint selection in the ``sft`` trainer, driven by a scripted evaluation: it stops
at the right step, the model it returns holds the weights of the best evaluation, the decision is in the events,
a resume keeps the best state, and recipes that cannot work are refused naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.sft import SFTConfig, SFTTrainer
from ift.errors import RecipeError
from ift.host import PluginHost
from ift.recipe import validate_recipe

TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


class Silent:
    total = 0

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, *args: Any) -> None:
        pass

    def write(self, message: str) -> None:
        self.lines.append(message)


class ScriptedEval:
    """Plays ``ctx.evaluate``: the metric value for each evaluated step comes from a script, and the trainable
    weights seen at each evaluation are kept to compare with the model the trainer returns."""

    def __init__(self, metric: str, values: dict[int, float]) -> None:
        self.metric, self.values = metric, values
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.stages: list[str] = []

    def __call__(self, model: Any, stage: str) -> dict[str, Any]:
        step = int(stage.removeprefix("step-"))
        self.stages.append(stage)
        self.weights[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return {"overall": {self.metric: self.values[step], "n": 4}, "per_source": {}}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list[ift.EncodedExample]]:
    adapter = CausalLMAdapter(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY), base_dir=tmp_path_factory.mktemp("es")
    )
    tokenizer = adapter.load_tokenizer()
    examples = [
        adapter.encode(
            tokenizer,
            [ift.Segment(f"q{i}\n", False), ift.Segment(f"a{i}<|endoftext|>", True)],
            source="s",
            record_id=f"row-{i}",
        )
        for i in range(8)
    ]
    return adapter, tokenizer, examples


def run(
    data: Any,
    run_dir: Path,
    evaluate: ScriptedEval,
    *,
    resume_from: Path | None = None,
    stop_after: int | None = None,
    **config: Any,
) -> tuple[ift.TrainResult, list[dict[str, Any]], Silent]:
    adapter, tokenizer, examples = data
    torch.manual_seed(0)
    model = adapter.load_model(tokenizer)
    events: list[dict[str, Any]] = []
    progress = Silent()
    settings = {
        "batch_size": 2,
        "max_steps": 12,
        "eval_every": 2,
        "log_every": 100,
        "shuffle": False,
        "batching": "padding",
        "learning_rate": 5e-3,
        **config,
    }
    ctx = ift.TrainContext(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter,
        train_examples=examples,
        eval_examples=[],
        seed=0,
        run_dir=run_dir,
        log_step=events.append,
        evaluate=evaluate,
        progress=progress,
        checkpoint_dir=run_dir / "checkpoints",
        resume_from=resume_from,
        should_stop=lambda: stop_after is not None and bool(events) and events[-1]["step"] >= stop_after,
    )
    return SFTTrainer(SFTConfig(**settings)).train(ctx), events, progress


def trainable(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


# exact_match by step: best 0.5 at step 4, then three evaluations that do not beat it (0.5 ties are no gain)
RISING_THEN_FLAT = {2: 0.1, 4: 0.5, 6: 0.2, 8: 0.5, 10: 0.4, 12: 0.9}


def test_stops_after_patience_and_returns_the_best_weights(data, tmp_path):
    evaluate = ScriptedEval("exact_match", RISING_THEN_FLAT)
    result, events, progress = run(
        data, tmp_path, evaluate, early_stopping_metric="exact_match", early_stopping_patience=3
    )
    assert result.steps == 10 and evaluate.stages == ["step-2", "step-4", "step-6", "step-8", "step-10"]
    assert same_weights(trainable(result.model), evaluate.weights[4])
    assert not same_weights(evaluate.weights[4], evaluate.weights[10])  # training did move the weights
    assert result.summary["early_stopping"] == {
        "metric": "exact_match",
        "higher_is_better": True,
        "patience": 3,
        "min_delta": 0.0,
        "keep_best": True,
        "evaluations": 5,
        "best_step": 4,
        "best_value": 0.5,
        "stopped_early": True,
        "stopped_at_step": 10,
        "model_step": 4,
    }
    # every evaluation step is logged (log_every is 100) with its decision; nothing after the stop
    assert [e["step"] for e in events] == [2, 4, 6, 8, 10]
    decisions = [e["early_stopping"] for e in events]
    assert [
        (d["value"], d["improved"], d["best_step"], d["evaluations_without_improvement"], d["stop"]) for d in decisions
    ] == [
        (0.1, True, 2, 0, False),
        (0.5, True, 4, 0, False),
        (0.2, False, 4, 1, False),
        (0.5, False, 4, 2, False),
        (0.4, False, 4, 3, True),
    ]
    assert "early stopping at step 10" in progress.lines[0] and "best 0.5 at step 4" in progress.lines[0]
    # only the best weights are kept, next to the checkpoints, with a manifest that verifies
    best = tmp_path / "checkpoints" / "best-step-00000004"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [best.name]
    assert ift.checkpoint.verify(best) is None


def test_lower_is_better_min_delta_and_the_last_step_competes(data, tmp_path):
    # loss by step, patience 0: never stop. 1.45 is not 0.1 below 1.5 (no improvement); the last step, not a
    # multiple of eval_every, is evaluated too and wins with 1.38
    evaluate = ScriptedEval("loss", {3: 2.0, 6: 1.5, 9: 1.45, 11: 1.38})
    result, events, _ = run(
        data,
        tmp_path,
        evaluate,
        max_steps=11,
        eval_every=3,
        early_stopping_metric="loss",
        early_stopping_patience=0,
        early_stopping_min_delta=0.1,
    )
    assert evaluate.stages == ["step-3", "step-6", "step-9", "step-11"]
    summary = result.summary["early_stopping"]
    assert (summary["higher_is_better"], summary["best_step"], summary["best_value"]) == (False, 11, 1.38)
    assert (summary["stopped_early"], summary["stopped_at_step"], summary["model_step"]) == (False, None, 11)
    assert [e["early_stopping"]["improved"] for e in events if "early_stopping" in e] == [True, True, False, True]
    assert same_weights(trainable(result.model), evaluate.weights[11])

    evaluate = ScriptedEval("loss", {3: 2.0, 6: 1.5, 9: 1.45, 11: 1.41})  # now the last step is no better
    result, _, _ = run(
        data,
        tmp_path / "again",
        evaluate,
        max_steps=11,
        eval_every=3,
        early_stopping_metric="loss",
        early_stopping_patience=0,
        early_stopping_min_delta=0.1,
    )
    assert result.summary["early_stopping"]["model_step"] == 6 and result.steps == 11
    assert same_weights(trainable(result.model), evaluate.weights[6])


def test_keep_best_false_returns_the_model_where_training_stopped(data, tmp_path):
    evaluate = ScriptedEval("exact_match", RISING_THEN_FLAT)
    result, _, _ = run(
        data, tmp_path, evaluate, early_stopping_metric="exact_match", early_stopping_patience=2, keep_best=False
    )
    assert result.steps == 8 and result.summary["early_stopping"]["model_step"] == 8
    assert same_weights(trainable(result.model), evaluate.weights[8])
    assert not (tmp_path / "checkpoints").exists()  # nothing written when the best weights are not kept


def test_a_resumed_run_keeps_the_best_state(data, tmp_path):
    ref_evaluate = ScriptedEval("exact_match", RISING_THEN_FLAT)
    reference, ref_events, _ = run(
        data, tmp_path / "reference", ref_evaluate, early_stopping_metric="exact_match", save_every=2, keep_last=2
    )
    run_dir = tmp_path / "interrupted"
    with pytest.raises(ift.Preempted):  # a signal after step 6: the best (step 4) is already behind
        run(
            data,
            run_dir,
            ScriptedEval("exact_match", RISING_THEN_FLAT),
            early_stopping_metric="exact_match",
            save_every=2,
            keep_last=2,
            stop_after=6,
        )
    checkpoint = run_dir / "checkpoints" / "step-00000006"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["position"]["early_stopping"] == {
        "metric": "exact_match",
        "best_value": 0.5,
        "best_step": 4,
        "waited": 1,
        "evaluations": 3,
        "stopped_at": None,
    }
    evaluate = ScriptedEval("exact_match", RISING_THEN_FLAT)
    resumed, events, _ = run(
        data, run_dir, evaluate, early_stopping_metric="exact_match", save_every=2, keep_last=2, resume_from=checkpoint
    )
    assert evaluate.stages == ["step-8", "step-10"]  # nothing evaluated twice
    assert resumed.summary["early_stopping"] == reference.summary["early_stopping"]
    assert resumed.summary["early_stopping"]["stopped_at_step"] == 10
    assert same_weights(evaluate.weights[10], ref_evaluate.weights[10])  # the resumed run trained identically
    assert same_weights(trainable(resumed.model), trainable(reference.model))  # the best, read back from disk
    assert same_weights(trainable(resumed.model), ref_evaluate.weights[4])
    assert [e["early_stopping"] for e in events] == [e["early_stopping"] for e in ref_events[-2:]]


def test_resume_fails_clearly_when_the_best_weights_are_gone(data, tmp_path):
    with pytest.raises(ift.Preempted):
        run(
            data,
            tmp_path,
            ScriptedEval("exact_match", RISING_THEN_FLAT),
            early_stopping_metric="exact_match",
            save_every=2,
            stop_after=6,
        )
    (tmp_path / "checkpoints" / "best-step-00000004" / "weights.safetensors").write_bytes(b"damaged")
    with pytest.raises(
        ift.RunError,
        match=r"the best weights it refers to \(step 4\) are unusable: .*"
        r"weights.safetensors does not match",
    ):
        run(
            data,
            tmp_path,
            ScriptedEval("exact_match", RISING_THEN_FLAT),
            early_stopping_metric="exact_match",
            save_every=2,
            resume_from=tmp_path / "checkpoints" / "step-00000006",
        )


def test_an_evaluation_without_the_metric_is_not_counted(data, tmp_path):
    class Empty(ScriptedEval):
        def __call__(self, model: Any, stage: str) -> dict[str, Any]:
            super().__call__(model, stage)
            return {}  # an empty eval split

    result, events, progress = run(
        data,
        tmp_path,
        Empty("loss", dict.fromkeys(range(13), 0.0)),
        max_steps=6,
        early_stopping_metric="loss",
        early_stopping_patience=1,
    )
    assert result.steps == 6 and result.summary["early_stopping"]["evaluations"] == 0
    assert result.summary["early_stopping"]["best_step"] is None and not any("early_stopping" in e for e in events)
    assert progress.lines[0] == (
        "early stopping: the evaluation at step 2 gave no 'loss' (is the eval split empty?); not counted"
    )
    # a value that is there but not finite (the evaluator writes NaN as None) is no improvement
    result, _, _ = run(
        data,
        tmp_path / "nan",
        ScriptedEval("loss", {2: 1.0, 4: None, 6: None}),
        max_steps=7,
        early_stopping_metric="loss",
        early_stopping_patience=2,
    )
    assert result.steps == 6 and result.summary["early_stopping"]["best_step"] == 2


# --- recipe validation --------------------------------------------------------------------------

MINIMAL = {
    "data": [{"source": "jsonl", "path": "train.jsonl"}],
    "model": {"adapter": "causal-lm", "tokenizer": "byte-level", "from_config": {"model_type": "llama"}},
}


def problems(host: PluginHost, trainer: dict[str, Any], **sections: Any) -> list[str]:
    raw = {**copy.deepcopy(MINIMAL), "trainer": trainer, **sections}
    with pytest.raises(RecipeError) as info:
        validate_recipe(raw, host, base_dir=Path("."))
    return [f"{p.key}: {p.message}" for p in info.value.problems]


def test_recipe_checks_name_the_key(host: PluginHost):
    assert problems(host, {"early_stopping_metric": "loss"}) == [
        "trainer.early_stopping_metric: needs trainer.eval_every: early stopping compares the periodic "
        "evaluations (e.g. eval_every = 50)"
    ]
    assert problems(host, {"early_stopping_metric": "rouge_l", "eval_every": 5}, eval={"metrics": ["loss"]}) == [
        "trainer.early_stopping_metric: 'rouge_l' is not computed by the evaluation: add it to eval.metrics (now: loss)"
    ]
    assert problems(host, {"early_stopping_metric": "exact_macth", "eval_every": 5}) == [
        "trainer.early_stopping_metric: 'exact_macth' is not computed by the evaluation (did you mean "
        "'exact_match'?): add it to eval.metrics (now: loss, exact_match)"
    ]
    assert problems(host, {"early_stopping_patience": 2, "keep_best": False}) == [
        f"trainer.{key}: is used only with trainer.early_stopping_metric, which is not set "
        '(e.g. early_stopping_metric = "loss")'
        for key in ("early_stopping_patience", "keep_best")
    ]
    assert problems(host, {"early_stopping_metric": "loss", "eval_every": 5, "early_stopping_patience": -1})[
        0
    ].startswith("trainer.early_stopping_patience: Input should be greater than or equal to 0")


def test_direction_comes_from_the_registered_metric(host: PluginHost):
    for metric, higher in (("loss", False), ("exact_match", True)):
        recipe = validate_recipe(
            {**copy.deepcopy(MINIMAL), "trainer": {"early_stopping_metric": metric, "eval_every": 5}},
            host,
            base_dir=Path("."),
        )
        assert recipe.trainer.config.early_stopping_direction() is higher
        assert recipe.resolved()["trainer"]["early_stopping_metric"] == metric
    # a config built in code, without the host, finds the loaded metric class
    assert SFTConfig(early_stopping_metric="perplexity", eval_every=5).early_stopping_direction() is False
    with pytest.raises(RecipeError, match="cannot tell whether a higher 'nope' is better"):
        SFTConfig(early_stopping_metric="nope", eval_every=5).early_stopping_direction()


# --- a whole run ----------------------------------------------------------------------------------


class Scripted(ift.Metric):
    """A metric whose overall value follows a script, one value per evaluation, so a real run can be steered."""

    name = "scripted"
    needs = "loss"
    higher_is_better = True
    script: ClassVar[list[float]] = [0.1, 0.5, 0.2, 0.3, 0.9, 0.9]
    total = 0
    calls = 0

    def compute(self, outputs: ift.EvalOutputs) -> float:
        if len(outputs.records) < type(self).total:
            return 0.0  # a per-source group
        type(self).calls += 1
        return self.script[type(self).calls - 1]


class ScriptedPlugin:
    @staticmethod
    @ift.hookimpl
    def ift_register_metrics() -> list[type]:
        return [Scripted]


def test_a_run_saves_and_evaluates_the_best_model(host: PluginHost, ift_run: Any):
    from safetensors.torch import load_file

    from ift.testing.models import tiny_model_table
    from ift.testing.samples import sample_rows

    host.register(ScriptedPlugin(), "scripted-metric")
    Scripted.total, Scripted.calls = 12, 0  # eval examples: a quarter of 2 x 24 rows
    rows = sample_rows(24)
    recipe = {
        "run": {"seed": 1},
        "data": [
            {"source": "jsonl", "path": "a.jsonl", "name": "upper"},
            {"source": "jsonl", "path": "b.jsonl", "name": "lower"},
        ],
        "model": tiny_model_table(),
        "trainer": {
            "max_steps": 12,
            "batch_size": 4,
            "learning_rate": 0.01,
            "log_every": 3,
            "eval_every": 2,
            "early_stopping_metric": "scripted",
            "early_stopping_patience": 2,
        },
        "eval": {"fraction": 0.25, "metrics": ["loss", "scripted"], "baseline": False},
    }
    lower = [{**r, "output": r["output"].lower()} for r in rows]
    run_dir = ift_run(recipe, files={"a.jsonl": rows, "b.jsonl": lower})
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    evaluated = {e["eval"]: e for e in events if "eval" in e}
    assert list(evaluated) == ["step-2", "step-4", "step-6", "step-8"]  # 0.1, 0.5 (best), 0.2, 0.3: stop at 8
    assert metrics["train"]["steps"] == 8
    assert metrics["train"]["early_stopping"] == {
        "metric": "scripted",
        "higher_is_better": True,
        "patience": 2,
        "min_delta": 0.0,
        "keep_best": True,
        "evaluations": 4,
        "best_step": 4,
        "best_value": 0.5,
        "stopped_early": True,
        "stopped_at_step": 8,
        "model_step": 4,
    }
    # the final evaluation ran on the weights of step 4: its loss is that evaluation's loss, not step 8's
    assert metrics["final"]["overall"]["loss"] == evaluated["step-4"]["loss"] != evaluated["step-8"]["loss"]
    saved = load_file(str(run_dir / "model" / "model.safetensors"))
    kept = load_file(str(run_dir / "checkpoints" / "best-step-00000004" / "weights.safetensors"))
    assert kept.keys() == saved.keys() and all(torch.equal(saved[n], kept[n]) for n in kept)
    # logged: every log_every steps and every evaluation step, the latter with the decision; per-source loss
    logged = [e for e in events if "step" in e]
    assert [e["step"] for e in logged] == [2, 3, 4, 6, 8]
    assert [e.get("early_stopping", {}).get("stop") for e in logged] == [False, None, False, False, True]
    assert all(set(e["loss_by_source"]) == {"upper", "lower"} for e in logged)
    assert set(metrics["train"]["loss_by_source"]) == {"upper", "lower"}
