"""GGUF end to end on tiny models: a LoRA run whose base is a GGUF file (the manifest and ``ift run`` name the file),
then ``ift export --gguf`` at f16 and q8_0: the file loads back with transformers to the exported model's logits,
carries the run's tokenizer and chat template, and its Ollama Modelfile builds the trained prompt."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

import ift
from ift.cli import main

from .helpers import write_tiny_gguf

pytestmark = pytest.mark.slow

ROWS = [
    {"instruction": f"Repeat: {w}", "input": "", "output": w}
    for w in ["hello", "world", "quick", "brown", "fox", "lazy", "dog", "tiny", "model", "Paris", "there", "over"]
]


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("gguf-run")
    write_tiny_gguf(folder / "base.gguf", quant="f16", tied=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "recipe.toml").write_text("""
[run]
name = "tiny-gguf"
cache = false

[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
name = "chatml"

[model]
adapter = "causal-lm"
name_or_path = "base.gguf"
device = "cpu"
peft = { method = "lora", r = 4, alpha = 16, dropout = 0.0 }

[trainer]
name = "sft"
max_steps = 3
batch_size = 4
learning_rate = 2e-2
max_length = 64

[eval]
fraction = 0.25
metrics = ["loss", "exact_match"]
max_new_tokens = 4
baseline = false
""")
    out = folder / "run"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", stdout)
        assert main(["run", str(folder / "recipe.toml"), "--output-dir", str(out)]) == 0
    return out, stdout.getvalue()


def test_a_run_from_a_gguf_file_records_and_announces_it(gguf_run: tuple[Path, str]) -> None:
    run, printed = gguf_run
    model = json.loads((run / "manifest.json").read_text())["model"]
    gguf = model["gguf"]
    assert gguf["file"] == "base.gguf" and gguf["quantization"] == "F16" and gguf["architecture"] == "llama"
    assert len(gguf["sha256"]) == 64 and gguf["size"] == (run.parent / "base.gguf").stat().st_size
    assert "pretrained llama model from the GGUF file base.gguf" in printed
    assert "tokenizer: the GGUF file's own" in model["summary"]


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_export_round_trip(gguf_run: tuple[Path, str], tmp_path: Path, quant: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ift.builtin_plugins.gguf.modelfile import prompt_pieces, render_like_ollama
    from ift.builtin_plugins.inference.runs import open_run
    from ift.host import PluginHost

    run_dir, _ = gguf_run
    out = tmp_path / "export"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", stdout)
        assert main(["export", str(run_dir), "--gguf", "--quant", quant, "--output", str(out)]) == 0
    name = f"tiny-gguf-{quant}.gguf"
    assert (out / name).is_file() and f"gguf: {name} ({quant}" in stdout.getvalue()
    report = json.loads((out / "export_report.json").read_text())["gguf"]
    check = report["check"]
    # f16 rounding only; q8_0 blocks of 32 with one scale each: larger, still small against logits of order 1
    assert check["max_abs_logit_diff"] < (2e-3 if quant == "f16" else 5e-2), check
    assert check["tokenizer_ids_equal"] and check["chat_template_equal"]
    assert set(check["change"]) == {"loss", "exact_match"} and abs(check["change"]["loss"]) < 0.05
    assert report["tensor_types"].get(quant.upper(), 0) > 0 and report["tied_embeddings"]

    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # the merged HF folder beside the GGUF
    alone = tmp_path / "alone"  # the GGUF without the export's tokenizer files beside it
    alone.mkdir()
    (alone / name).symlink_to(out / name)
    loaded = AutoModelForCausalLM.from_pretrained(str(alone), gguf_file=name).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(alone), gguf_file=name)
    run = open_run(run_dir, PluginHost(entry_points=False), device="cpu")
    messages = [ift.Message("system", "Be brief."), ift.Message("user", "Repeat: hello")]
    trained_prompt = run.prompt(messages)
    rendered = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages], tokenize=False, add_generation_prompt=True
    )
    assert rendered == trained_prompt  # the GGUF's chat template builds the training prompt
    ids = torch.tensor([tokenizer(trained_prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        diff = float((merged(ids).logits - loaded(ids).logits).abs().max())
    assert diff < (2e-3 if quant == "f16" else 5e-2)

    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{name}\n" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER temperature 0" in modelfile and "PARAMETER num_ctx 64" in modelfile
    pieces = prompt_pieces(run.prompt)
    assert pieces.multi_turn
    for conversation in (
        messages,
        messages[1:],
        [ift.Message("user", "a"), ift.Message("assistant", "b"), ift.Message("user", "c")],
    ):
        assert render_like_ollama(pieces, conversation) == run.prompt(conversation)
    assert "<|im_start|>system\n{{ .System }}<|im_end|>\n" in modelfile


def test_gguf_export_refuses_other_architectures(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from ift.builtin_plugins.gguf.writing import write_gguf

    from .helpers import bpe_tokenizer

    tokenizer = bpe_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ift.RunError, match=r"supports the llama architecture .* architecture is 'gpt2'"):
        write_gguf(model, tokenizer, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []
