"""``ift export`` on a tiny LoRA run: the merged folder equals base + adapter and loads with plain
transformers; the int8 copy is smaller, loads back for ``ift generate``, and its metric change is reported;
full fine-tunes, existing outputs and failures are handled without half-written folders."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from ift import RunError
from ift.cli import main
from ift.host import PluginHost

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
    ]
]
TINY = (
    '{ model_type = "llama", hidden_size = 64, intermediate_size = 128, num_hidden_layers = 2, '
    "num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 128 }"
)
PROBE = "### Instruction:\nUppercase: dog\n\n### Response:\n"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "recipe.toml").write_text(f"""
[run]
name = "tiny-export"
cache = false

[[data]]
source = "jsonl"
path = "data.jsonl"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
device = "cpu"
from_config = {TINY}
peft = {{ method = "lora", r = 4, alpha = 16, dropout = 0.0 }}

[trainer]
name = "sft"
max_steps = 4
batch_size = 4
learning_rate = 2e-2
max_length = 64

[eval]
fraction = 0.25
metrics = ["loss", "exact_match", "rouge_l"]
max_new_tokens = 4
baseline = false
""")
    out = folder / "run"
    assert main(["run", str(folder / "recipe.toml"), "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def exported(lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The export (merged, with its int8 copy) and what ``ift export`` printed on stdout."""
    out = tmp_path_factory.mktemp("exports") / "tiny-merged"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", stdout)
        assert main(["export", str(lora_run), "--merge", "--quantize", "int8", "--output", str(out)]) == 0
    return out, stdout.getvalue()


def ids_of(tokenizer, text: str):
    import torch

    return torch.tensor([tokenizer(text)["input_ids"]])


# --- the merged folder -----------------------------------------------------------------------------


def test_merged_model_gives_the_logits_of_base_plus_adapter(lora_run: Path, exported: tuple[Path, str]):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(lora_run / "model" / "base_model")
    adapted = PeftModel.from_pretrained(base, lora_run / "model").eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = ids_of(tokenizer, PROBE + "DOG")
    untouched = AutoModelForCausalLM.from_pretrained(lora_run / "model" / "base_model").eval()
    with torch.no_grad():
        expected, got = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
        base_logits = untouched(input_ids=ids).logits
    assert not torch.allclose(got, base_logits, atol=1e-3)  # the trained adapter does change the output
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    report = json.loads((out / "export_report.json").read_text())
    assert report["merge"]["max_abs_logit_diff"] < 1e-5 and report["merge"]["probe_examples"] == 4
    assert report["merge"]["r"] == 4 and report["merge"]["alpha"] == 16


def test_export_folder_is_a_standalone_transformers_model_with_a_model_card(lora_run: Path, exported: tuple[Path, str]):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    out, _ = exported
    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
        "export_report.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "adapter_config.json").exists() and not (out / "base_model").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, LlamaForCausalLM) and tokenizer.eos_token == "<|endoftext|>"
    assert GenerationConfig.from_pretrained(out).pad_token_id == tokenizer.pad_token_id
    generated = model.generate(**tokenizer(PROBE, return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > len(PROBE.encode())
    manifest = json.loads((lora_run / "manifest.json").read_text())
    card = (out / "README.md").read_text()
    assert card.startswith("# tiny-export\n") and str(lora_run.resolve()) in card
    assert manifest["template"]["hash"] in card and "merge_and_unload" in card and "r=4" in card
    assert "### Instruction:\n{your message}\n\n### Response:\n" in card  # the prompt format it was trained on
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a folder as mkdir makes it, not mkdtemp's 0700


# --- the int8 copy ---------------------------------------------------------------------------------


def test_int8_copy_is_smaller_and_its_report_has_both_metric_values(lora_run: Path, exported: tuple[Path, str]):
    out, printed = exported
    report = json.loads((out / "export_report.json").read_text())
    fp32 = (out / "model.safetensors").stat().st_size
    int8 = (out / "int8" / "model_int8.pt").stat().st_size
    assert report["export"] == {"path": ".", "dtype": "float32", "weights_bytes": fp32}
    assert report["int8"]["weights_bytes"] == int8
    assert int8 < 0.6 * fp32
    assert report["int8"]["quantized_layers"] == 2 * 7 + 1  # q k v o gate up down per layer, and lm_head
    assert report["int8"]["loadable_by_adapter"] is True
    evaluation = report["eval"]
    assert evaluation["records"] == 4 and evaluation["metrics"] == ["loss", "exact_match", "rouge_l"]
    for model in ("export", "int8"):
        assert set(evaluation[model]) == {"loss", "exact_match", "rouge_l", "n"}
        assert evaluation[model]["loss"] > 0 and evaluation[model]["n"] == 4
    for name in ("loss", "exact_match", "rouge_l"):
        assert evaluation["change"][name] == pytest.approx(
            evaluation["int8"][name] - evaluation["export"][name], abs=2e-6
        )
    assert evaluation["int8"]["loss"] != evaluation["export"]["loss"]  # quantized: close, not identical
    assert abs(evaluation["change"]["loss"]) < 0.05 * evaluation["export"]["loss"]
    # the merged export reproduces the run's own final evaluation
    final = json.loads((lora_run / "metrics.json").read_text())["final"]["overall"]
    assert evaluation["export"]["loss"] == pytest.approx(final["loss"], rel=1e-5)
    lines = printed.splitlines()
    assert lines[1].startswith("weights") and "(float32)" in lines[1] and "%" in lines[1]
    assert [line.split()[0] for line in lines[2:5]] == ["loss", "exact_match", "rouge_l"]
    assert f"{evaluation['export']['loss']:.4f}" in lines[2] and f"{evaluation['int8']['loss']:.4f}" in lines[2]


def test_int8_copy_loads_back_quantized_and_ift_generate_uses_it(lora_run: Path, exported: tuple[Path, str], capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from ift.builtin_plugins.inference.quantize import load_quantized_model, quantize_int8
    from ift.builtin_plugins.inference.runs import open_run

    out, _ = exported
    quantized = load_quantized_model(out / "int8", AutoModelForCausalLM)
    assert "quantized" in type(quantized.lm_head).__module__
    # the saved copy equals quantizing the fp32 export again
    fresh = quantize_int8(AutoModelForCausalLM.from_pretrained(out))
    ids = ids_of(open_run(lora_run, PluginHost(entry_points=False)).tokenizer, PROBE)
    with torch.no_grad():
        assert torch.equal(quantized(input_ids=ids).logits, fresh(input_ids=ids).logits)
    assert (
        main(["generate", str(lora_run), "Uppercase: dog", "--model", str(out / "int8"), "--max-new-tokens", "5"]) == 0
    )
    run = open_run(lora_run, PluginHost(entry_points=False), model_dir=out / "int8")
    assert "quantized" in type(run.model.lm_head).__module__
    assert capsys.readouterr().out == run.generate([PROBE], max_new_tokens=5)[0] + "\n"


# --- refusals and atomicity ------------------------------------------------------------------------


def test_merge_is_refused_for_a_full_fine_tune_which_exports_without_it(
    lora_run: Path, exported: tuple[Path, str], tmp_path: Path, capsys
):
    out, _ = exported
    full = tmp_path / "full"
    shutil.copytree(lora_run, full, ignore=shutil.ignore_patterns("model"))
    shutil.copytree(out, full / "model", ignore=shutil.ignore_patterns("int8", "README.md", "export_report.json"))
    resolved = json.loads((full / "resolved.json").read_text())
    resolved["model"]["peft"] = None
    (full / "resolved.json").write_text(json.dumps(resolved))
    assert main(["export", str(full), "--merge"]) == 5
    err = capsys.readouterr().err
    assert "was fully fine-tuned" in err and "no LoRA weights to merge" in err and "without --merge" in err
    assert not (full / "export").exists()
    assert main(["export", str(full)]) == 0  # the documented way: a standalone copy
    report = json.loads((full / "export" / "export_report.json").read_text())
    assert report["merge"] is None and report["int8"] is None
    assert (full / "export" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def test_lora_run_without_merge_is_refused(lora_run: Path, tmp_path: Path, capsys):
    assert main(["export", str(lora_run), "-o", str(tmp_path / "x")]) == 5
    assert "pass --merge" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())


def test_existing_output_is_kept_unless_overwrite(lora_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(lora_run), "--merge", "-o", str(out)]) == 5
    assert "already exists; choose another --output or pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["export", str(lora_run), "--merge", "-o", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folder left
    for inside in (lora_run, lora_run / "model"):
        assert main(["export", str(lora_run), "--merge", "-o", str(inside), "--overwrite"]) == 5
        assert "would replace the run directory or its model" in capsys.readouterr().err


def test_a_failure_midway_leaves_no_export_folder(lora_run: Path, tmp_path: Path, monkeypatch, capsys):
    from ift.builtin_plugins.inference import export as export_module

    def broken(model):
        raise RunError("quantization failed on purpose")

    monkeypatch.setattr(export_module, "quantize_int8", broken)
    assert main(["export", str(lora_run), "--merge", "--quantize", "int8", "-o", str(tmp_path / "out")]) == 5
    assert "quantization failed on purpose" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its .partial folder


# --- other peft methods ----------------------------------------------------------------------------


def peft_run(folder: Path, peft: str) -> Path:
    """A tiny run of the uppercase task with the given ``[model] peft`` table (2 steps, loss only)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "recipe.toml").write_text(f"""
[run]
name = "tiny-peft"
cache = false

[[data]]
source = "jsonl"
path = "data.jsonl"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
device = "cpu"
from_config = {TINY}
peft = {peft}

[trainer]
name = "sft"
max_steps = 2
batch_size = 4
learning_rate = 5e-2
max_length = 64

[eval]
fraction = 0.25
metrics = ["loss"]
baseline = false
""")
    out = folder / "run"
    assert main(["run", str(folder / "recipe.toml"), "--output-dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_virtual_token_runs_are_refused_with_or_without_merge(method: str, tmp_path: Path, capsys):
    run = peft_run(tmp_path / method, f'{{ method = "{method}", num_virtual_tokens = 4 }}')
    capsys.readouterr()
    for merge in ([], ["--merge"]):
        assert main(["export", str(run), *merge, "-o", str(tmp_path / "out")]) == 5
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err  # one line, no traceback
        assert f"trained a {method} adapter" in err and "cannot be merged into the weights" in err
        assert f"load {run / 'model'} with peft" in err and str(run / "model" / "base_model") in err
        assert "fully fine-tuned" not in err
        assert not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # what the message says to load does load, and reproduces the run's adapted model
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ift.builtin_plugins.inference.runs import open_run

    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(run / "model" / "base_model"), run / "model"
    ).eval()
    opened = open_run(run, PluginHost(entry_points=False))
    ids = ids_of(opened.tokenizer, PROBE)
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, opened.model.eval()(input_ids=ids).logits, atol=1e-6)


@pytest.mark.parametrize(
    ("method", "peft", "label"),
    [
        ("ia3", '{ method = "ia3" }', "IA3"),
        ("adalora", '{ method = "adalora", init_r = 4, target_r = 2, alpha = 8, dropout = 0.0 }', "AdaLoRA"),
    ],
)
def test_ia3_and_adalora_runs_merge_into_a_standalone_model(method: str, peft: str, label: str, tmp_path: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = peft_run(tmp_path / method, peft)
    out = tmp_path / "merged"
    assert main(["export", str(run), "--merge", "-o", str(out)]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["merge"]["method"] == method and report["merge"]["max_abs_logit_diff"] < 1e-4
    assert not (out / "adapter_config.json").exists()
    assert f"Fine-tuning: {label} (" in (out / "README.md").read_text()
    tokenizer_ids = ids_of(AutoTokenizer.from_pretrained(out), PROBE + "DOG")
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(run / "model" / "base_model"), run / "model"
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(run / "model" / "base_model").eval()
    with torch.no_grad():
        expected, got = adapted(input_ids=tokenizer_ids).logits, merged(input_ids=tokenizer_ids).logits
        assert not torch.allclose(got, base(input_ids=tokenizer_ids).logits, atol=1e-4)  # training changed it
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
