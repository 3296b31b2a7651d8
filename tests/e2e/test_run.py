"""A whole ``ift run`` through the CLI on a tiny model: files of the run directory, and a model folder that
plain transformers / peft load and generate with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ift.cli import main

pytestmark = pytest.mark.slow

ROWS = [
    {"instruction": f"Uppercase: {w}", "input": "", "output": w.upper()}
    for w in [
        "abc",
        "dog",
        "cat",
        "xyz",
        "sun",
        "map",
        "red",
        "toy",
        "fig",
        "jam",
        "owl",
        "pen",
        "rug",
        "sky",
        "tea",
        "van",
        "wax",
        "yak",
        "zip",
        "elm",
        "gum",
        "hat",
        "ink",
        "kit",
    ]
]
TINY_MODEL = (
    '{ model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, '
    "num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 64 }"
)


def write_recipe(tmp_path: Path, extra_model: str = "", eval_section: str = "") -> Path:
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""
[run]
name = "tiny"
seed = 7

[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
name = "alpaca"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = {TINY_MODEL}
{extra_model}

[trainer]
name = "sft"
max_steps = 6
batch_size = 4
learning_rate = 1e-3
log_every = 2
max_length = 64

[eval]
fraction = 0.2
metrics = ["loss", "perplexity", "exact_match", "rouge_l"]
max_new_tokens = 4
{eval_section}
""")
    return recipe


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("full")
    recipe = write_recipe(tmp)
    out = tmp / "run"
    assert main(["run", str(recipe), "--output-dir", str(out), "--set", "trainer.log_every=3"]) == 0
    return out


def test_run_directory_files(full_run: Path):
    for name in ("recipe.toml", "resolved.json", "manifest.json", "events.jsonl", "metrics.json", "status.json"):
        assert (full_run / name).is_file(), name
    assert not list(full_run.glob(".*partial")) and not list(full_run.glob(".*.tmp"))
    assert json.loads((full_run / "status.json").read_text())["status"] == "completed"
    assert 'name = "tiny"' in (full_run / "recipe.toml").read_text()  # as given, not resolved


def test_resolved_fills_defaults_and_records_overrides(full_run: Path):
    resolved = json.loads((full_run / "resolved.json").read_text())
    assert resolved["trainer"]["log_every"] == 3
    assert resolved["trainer"]["scheduler"] == "cosine"  # a default the recipe did not write
    assert resolved["data"][0]["format"] == "auto"
    assert resolved["overrides"] == ["trainer.log_every=3"]


def test_manifest_records_versions_plugins_and_data(full_run: Path):
    manifest = json.loads((full_run / "manifest.json").read_text())
    for package in ("torch", "transformers", "peft", "datasets"):
        assert manifest["packages"][package] != "not installed"
    names = {p["name"]: p for p in manifest["plugins"]}
    assert names["sources"]["distribution"] == "ift"
    assert "jsonl" in names["sources"]["registered"]["source"]
    source = manifest["data"]["sources"][0]
    assert source["records"] == len(ROWS) and source["fingerprint"].startswith("sha256:")
    assert manifest["template"]["hash"].startswith("sha256:")
    assert manifest["seed"] == 7
    assert manifest["data"]["split"]["train"] + manifest["data"]["split"]["eval"] == len(ROWS)


def test_events_have_one_line_per_logged_step(full_run: Path):
    events = [json.loads(line) for line in (full_run / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [3, 6]
    for event in events:
        assert event["loss"] > 0 and event["learning_rate"] >= 0
        assert event["tokens"] > 0 and event["tokens_per_s"] > 0
        assert 0 < event["trainable_tokens"] < event["tokens"]


def test_metrics_have_baseline_final_and_per_source(full_run: Path):
    metrics = json.loads((full_run / "metrics.json").read_text())
    for stage in ("baseline", "final"):
        overall = metrics[stage]["overall"]
        assert set(overall) >= {"loss", "perplexity", "exact_match", "rouge_l", "n"}
        assert metrics[stage]["per_source"]["data"] == overall
    assert metrics["final"]["overall"]["loss"] < metrics["baseline"]["overall"]["loss"]
    assert metrics["train"]["steps"] == 6


def test_model_folder_loads_with_plain_transformers_and_generates(full_run: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(full_run / "model")
    model = AutoModelForCausalLM.from_pretrained(full_run / "model")
    ids = tokenizer("### Instruction:\nUppercase: abc\n\n### Response:\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3 or tokenizer.eos_token_id in out[0].tolist()
    assert tokenizer.eos_token == "<|endoftext|>"


def test_lora_run_saves_adapter_that_plain_peft_loads(tmp_path: Path):
    recipe = write_recipe(
        tmp_path, extra_model='peft = { method = "lora", r = 4, alpha = 8 }', eval_section="baseline = false"
    )
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 0
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert (out / "model" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(out / "model" / "base_model")
    model = PeftModel.from_pretrained(base, out / "model")
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "baseline" not in metrics and metrics["final"]["overall"]["n"] == 5


def test_failed_run_is_marked_failed_without_metrics_or_model(tmp_path: Path, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    # a learning rate this large makes the loss non-finite: the run must fail visibly
    code = main(
        [
            "run",
            str(recipe),
            "--output-dir",
            str(out),
            "--set",
            "trainer.learning_rate=1e30",
            "--set",
            "trainer.max_grad_norm=1e30",
        ]
    )
    err = capsys.readouterr().err
    assert code == 5, err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "non-finite loss at step 2 (examples data.jsonl:" in status["error"]
    assert not (out / "metrics.json").exists() and not (out / "model").exists()


def test_existing_output_dir_is_refused(tmp_path: Path, capsys):
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["run", str(recipe), "--output-dir", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"


OBSERVER = """
import json
from pathlib import Path

import ift

LOG = Path(__file__).with_name("calls.jsonl")


def _log(**row):
    with LOG.open("a") as handle:
        handle.write(json.dumps(row) + "\\n")


@ift.hookimpl
def ift_run_start(run_dir, resolved):
    _log(hook="run_start", seed=resolved["run"]["seed"])


@ift.hookimpl
def ift_step_end(run_dir, event):
    _log(hook="step_end", step=event["step"])


@ift.hookimpl
def ift_evaluate_end(run_dir, stage, metrics):
    _log(hook="evaluate_end", stage=stage, n=metrics["overall"]["n"])


@ift.hookimpl
def ift_run_end(run_dir, status, metrics):
    _log(hook="run_end", status=status)
"""


def test_local_plugin_observes_the_run_lifecycle(tmp_path: Path):
    recipe = write_recipe(tmp_path, eval_section="")
    (tmp_path / "observer.py").write_text(OBSERVER)
    recipe.write_text(recipe.read_text() + '\n[plugins]\nlocal = ["observer.py"]\n')
    assert main(["run", str(recipe), "--output-dir", str(tmp_path / "run"), "--set", "trainer.eval_every=4"]) == 0
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert calls == [
        {"hook": "run_start", "seed": 7},
        {"hook": "evaluate_end", "stage": "baseline", "n": 5},
        {"hook": "step_end", "step": 2},
        {"hook": "step_end", "step": 4},
        {"hook": "evaluate_end", "stage": "step-4", "n": 5},
        {"hook": "step_end", "step": 6},
        {"hook": "evaluate_end", "stage": "final", "n": 5},
        {"hook": "run_end", "status": "completed"},
    ]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert {"eval": "step-4"}.items() <= events[2].items()


def test_empty_dataset_after_filtering_fails_before_the_model_loads(tmp_path: Path, capsys):
    recipe = write_recipe(tmp_path)
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"instruction": "Say hi", "input": "", "output": ""}) + "\n" for _ in range(5))
    )
    recipe.write_text(recipe.read_text() + '\n[[transforms]]\nname = "drop-invalid"\n')
    code = main(["run", str(recipe), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 3
    assert "no training examples are left" in err and "'empty output': 5" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "model" not in manifest  # failed before any model was loaded


def test_all_trainable_tokens_truncated_are_dropped_and_counted(tmp_path: Path):
    recipe = write_recipe(tmp_path, eval_section="baseline = false")
    # alpaca prompt for these rows is ~45 tokens: with max_length 40 nothing trainable is left
    code = main(["run", str(recipe), "--output-dir", str(tmp_path / "run"), "--set", "trainer.max_length=40"])
    assert code == 3
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    reasons = manifest["data"]["encoding"]["train"]["reasons"]
    assert reasons == {"no trainable tokens left after truncation": 19}


def test_runs_under_torchrun_with_two_processes(tmp_path: Path):
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    recipe = write_recipe(tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "ift.cli", "run", str(recipe), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run directory:") == 1  # rank 1 stays quiet
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    # 19 training rows, batch 4 per process, 2 processes: 3 optimizer steps per epoch
    assert [e["epoch"] for e in events] == [0.6667, 1.3333, 2.0]
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert (out / "model" / "model.safetensors").is_file()
