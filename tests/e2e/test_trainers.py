"""Two-step workflows through the CLI on tiny models: a first run, then a ``continual`` run that replays and
evaluates its records, and a ``distill`` run that uses it as the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.cli import main

pytestmark = pytest.mark.slow

WORDS = ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen", "rug", "sky", "tea", "van"]
MODEL = (
    'from_config = { model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 1, '
    'num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 64 }\ntokenizer = "byte-level"'
)


def write_run(folder: Path, task: str, model: str, trainer: str) -> Path:
    """A recipe for one tiny run on ``task`` rows (uppercase or reverse the word)."""
    folder.mkdir(parents=True, exist_ok=True)
    answer = str.upper if task == "upper" else (lambda w: w[::-1])
    (folder / f"{task}.jsonl").write_text(
        "".join(json.dumps({"instruction": f"{task}: {w}", "input": "", "output": answer(w)}) + "\n" for w in WORDS)
    )
    recipe = folder / "recipe.toml"
    recipe.write_text(f"""
[run]
name = "{task}"
seed = 3

[[data]]
source = "jsonl"
path = "{task}.jsonl"

[template]
name = "alpaca"

[model]
adapter = "causal-lm"
device = "cpu"
{model}

[trainer]
max_steps = 4
batch_size = 4
learning_rate = 1e-3
max_length = 64
log_every = 2
{trainer}

[eval]
fraction = 0.25
baseline = false
metrics = ["loss", "exact_match"]
max_new_tokens = 4
""")
    return recipe


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("task-a")
    out = tmp / "runs" / "task-a"
    assert main(["run", str(write_run(tmp, "upper", MODEL, 'name = "sft"')), "--output-dir", str(out)]) == 0
    return out


def test_continual_run_replays_and_reports_the_previous_tasks(first_run: Path, tmp_path: Path):
    trainer = (
        f'name = "continual"\nprevious_run = "{first_run}"\nreplay_fraction = 0.5\newc_lambda = 100.0\newc_examples = 6'
    )
    recipe = write_run(tmp_path, "reverse", f'name_or_path = "{first_run / "model"}"', trainer)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    report = metrics["train"]["continual"]
    old_train = (first_run / "data" / "train.jsonl").read_text().splitlines()
    old_eval = (first_run / "data" / "eval.jsonl").read_text().splitlines()
    assert report["previous_run"] == str(first_run) and "warnings" not in report
    assert report["replay"] == {
        "records": round(0.5 * len(old_train)),
        "examples": round(0.5 * len(old_train)),
        "dropped_in_eval_split": 0,
        "of_previous_train_records": len(old_train),
        "by_source": {"upper": round(0.5 * len(old_train))},
    }
    before, after = report["previous_tasks"]["before"], report["previous_tasks"]["after"]
    assert before["overall"]["n"] == after["overall"]["n"] == len(old_eval)
    assert set(before["per_source"]) == {"upper"}
    # before training the model is the first run's final model: same records, same template, same loss
    first = json.loads((first_run / "metrics.json").read_text())
    assert before["overall"]["loss"] == pytest.approx(first["final"]["overall"]["loss"], rel=1e-4)
    assert report["previous_tasks"]["change"]["loss"] == pytest.approx(
        after["overall"]["loss"] - before["overall"]["loss"], abs=1e-5
    )
    assert report["ewc"]["fisher_examples"] == 6 and report["ewc"]["final_penalty"] > 0
    assert set(metrics["final"]["per_source"]) == {"reverse"}  # the new task, evaluated as usual
    # replayed examples keep their source: the training loss is reported for both tasks
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines() if '"step"' in line]
    assert set().union(*(e["loss_by_source"] for e in events)) == {"reverse", "upper"}


def test_distill_run_with_a_run_directory_as_teacher(first_run: Path, tmp_path: Path):
    student = MODEL.replace("hidden_size = 32, intermediate_size = 64", "hidden_size = 16, intermediate_size = 32")
    recipe = write_run(
        tmp_path, "upper", student, f'name = "distill"\nteacher = "{first_run}"\nalpha = 0.5\ntemperature = 2.0'
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())["train"]["distill"]
    assert report["teacher"] == str(first_run / "model")
    assert report["kl"] > 0 and report["ce_loss"] > 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [2, 4]
    assert events[-1]["loss_by_source"]["upper"] == pytest.approx(events[-1]["loss"], rel=1e-4)  # the objective


def test_continual_never_replays_this_runs_eval_records(first_run: Path, tmp_path: Path):
    """The same task again with another seed: its eval split holds records the first run trained on, and
    replaying all of the first run's training records must not bring them back into training."""
    trainer = f'name = "continual"\nprevious_run = "{first_run}"\nreplay_fraction = 1.0\nevaluate_previous = false'
    recipe = write_run(tmp_path, "upper", f'name_or_path = "{first_run / "model"}"', trainer)
    recipe.write_text(recipe.read_text().replace("seed = 3", "seed = 11"))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 0

    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    old_train, new_eval = rows(first_run / "data" / "train.jsonl"), rows(out / "data" / "eval.jsonl")
    held = {json.dumps(r["messages"]) for r in new_eval}
    leaking = [r for r in old_train if json.dumps(r["messages"]) in held]
    assert leaking  # the seeds split differently: the test has something to catch
    replay = json.loads((out / "metrics.json").read_text())["train"]["continual"]["replay"]
    assert replay["dropped_in_eval_split"] == len(leaking)
    assert replay["records"] == len(old_train) - len(leaking)


def test_a_teacher_folder_that_does_not_exist_yet_fails_at_once(tmp_path: Path, capsys):
    """``teacher = "runs/quickstart"`` before the first run: refused naming the key, never tried on the hub."""
    import time

    (tmp_path / "runs").mkdir()
    recipe = write_run(tmp_path, "upper", MODEL, 'name = "distill"\nteacher = "runs/quickstart"')
    assert main(["validate", str(recipe)]) == 0  # an earlier step may still produce it
    began = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("HF_HUB_OFFLINE", raising=False)  # the hub would be tried if it were taken for an id
        assert main(["run", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - began < 20
    err = capsys.readouterr().err
    assert f"trainer.teacher: no folder 'runs/quickstart' (looked in {tmp_path} and {Path.cwd()})" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "model").exists()
