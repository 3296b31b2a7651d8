"""The real-model mode of the ift-vs-TRL benchmark (``run.py --model-dir``): its instruction text made from the
standard library's docstrings, the benchmark copy of a model folder, and the LoRA / gradient-checkpointing runs
of the ift child."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "examples" / "benchmarks"
TINY = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


def _module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_real_text_rows_are_docstrings_deterministic_and_varied():
    real_text = _module("real_text")
    rows = real_text.make_rows()
    assert rows == real_text.make_rows() and len(rows) > 500
    assert real_text.make_rows(10) == rows[:10]
    import json as json_module

    doc = next(r for r in rows if "json.dumps" in r["prompt"])
    assert doc["completion"] == __import__("inspect").getdoc(json_module.dumps)
    assert all(r["prompt"].endswith("\n") and len(r["completion"].split()) >= real_text.MIN_WORDS for r in rows)
    assert len({r["completion"] for r in rows}) == len(rows)  # each docstring once
    words = sorted(len(r["completion"].split()) for r in rows)
    assert words[len(words) // 2] < 100 < words[-1]  # lengths as they come: mostly short, a long tail
    assert "standard library" in real_text.describe(rows)


def test_model_copy_gets_a_pad_token_distinct_from_eos(tmp_path: Path):
    workload, run = _module("workload"), _module("run")
    source = workload.build_model_dir(tmp_path / "src", TINY)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    tok.pad_token = tok.eos_token  # as SmolLM2 ships
    tok.save_pretrained(str(source))
    copy, pad_id = run.real_model_dir(source, tmp_path / "copy")
    again = AutoTokenizer.from_pretrained(str(copy))
    assert pad_id == again.pad_token_id != again.eos_token_id
    assert (copy / "model.safetensors").is_symlink()
    assert json.loads((copy / "config.json").read_text())["pad_token_id"] == pad_id


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{"lora": {"r": 4, "alpha": 8, "dropout": 0.0}}, {"gradient_checkpointing": True}])
def test_ift_child_runs_lora_and_gradient_checkpointing(tmp_path: Path, extra: dict):
    workload = _module("workload")
    data = workload.write_jsonl(workload.make_rows("lognormal", 32), tmp_path / "data.jsonl")
    model = workload.build_model_dir(tmp_path / "model", TINY)
    settings = workload.Settings(
        data="lognormal", ift_batching="padding", trl_mode="default", steps=2, batch_size=4, extra=extra
    )
    spec = {
        "settings": settings.to_json(),
        "data_path": str(data),
        "model_dir": str(model),
        "pad_id": 256,
        "work_dir": str(tmp_path / "work"),
        "warmup": 1,
        "precision": "fp32",
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"), IFT_DISABLE_ENTRY_POINTS="1")
    out = subprocess.run(
        [sys.executable, str(BENCH / "child_ift.py"), str(tmp_path / "spec.json"), str(tmp_path / "result.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert json.loads((tmp_path / "result.json").read_text())["steps"] == 2
    manifest = json.loads((tmp_path / "work" / "run" / "manifest.json").read_text())
    if "lora" in extra:
        assert manifest["model"]["trainable_parameters"] < manifest["model"]["parameters"]
    else:
        recipe = (tmp_path / "work" / "recipe.toml").read_text()
        assert "gradient_checkpointing = true" in recipe


def test_memory_targets_are_checked_in_decimal_gigabytes():
    run = _module("run")
    mib = 2.9 * 1024  # 2.9 GiB = 3.11 GB: within 3.0 GiB, over 3.0 GB
    results = [
        {
            "label": "gradient checkpointing, default vs default",
            "ratios": {"tokens_per_s": {"median": 3.0}},
            "ift": {"peak_rss_mb": {"max": mib}},
            "ift_counters_match": True,
        }
    ]
    ((text, met, figure),) = run.real_targets(results)
    assert text == "peak RSS with gradient_checkpointing = true <= 3.0 GB (largest of the runs)"
    assert met is False and figure == "3.11 GB = 2.90 GiB"


def test_only_selects_rows_by_text_or_label_start():
    run = _module("run")
    labels = [c[0] for c in run.REAL_COMPARISONS]

    def picked(only: str) -> list[str]:
        return [label for label in labels if any(run.selects(text, label) for text in only.split("|"))]

    assert picked("^default vs default") == ["default vs default"]
    assert picked("default vs default") == [label for label in labels if label.endswith("default vs default")]
    assert picked("^default vs default|padding-free") == [
        "default vs default",
        "padding-free vs padding-free",
        "padding-free vs padding-free, data order",
    ]
    assert picked("LoRA") == ["LoRA r=16, default vs default"]


def test_ift_trainer_lines_go_into_ifts_trainer_table_and_never_into_the_readme():
    import tomllib

    run, child = _module("run"), _module("child_ift")
    args = run.parse_args(
        ["--ift-trainer", "gradient_checkpointing = false", "--ift-trainer", "max_tokens_per_forward = 375"]
    )
    assert args.ift_trainer == ["gradient_checkpointing = false", "max_tokens_per_forward = 375"]
    with pytest.raises(SystemExit, match="cannot --update-readme"):
        run.main(["--ift-trainer", "gradient_checkpointing = false", "--update-readme", "--no-venv"])
    settings = {
        "seed": 1,
        "steps": 2,
        "learning_rate": 1e-3,
        "adam_betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "batch_size": 2,
        "max_length": 64,
        "ift_batching": "auto",
        "shuffle": False,
    }
    spec = {
        "settings": settings,
        "data_path": "d.jsonl",
        "model_dir": "m",
        "trainer_extra": "\n".join(args.ift_trainer),
    }
    trainer = tomllib.loads(child.recipe_text(spec))["trainer"]
    assert trainer["gradient_checkpointing"] is False and trainer["max_tokens_per_forward"] == 375
