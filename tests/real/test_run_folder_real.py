"""The run folder of a real SmolLM2-135M-Instruct LoRA run in transformers: the saved chat template renders
ift's prompt, and a text-generation pipeline over AutoPeftModelForCausalLM (loaded from another working
directory) gives ift generate's greedy answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ift
from ift.cli import main


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_dir: Path) -> Path:
    """SmolLM2 as the plain safetensors folder ift converts the packaged GGUF into (tests/real/conftest.py)."""
    return smollm2_dir


@pytest.mark.parametrize("template", ["chatml", "chat"])
def test_smollm2_lora_run_in_a_pipeline(
    smollm2_folder: Path, tmp_path: Path, template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer, GenerationConfig, pipeline

    from ift.builtin_plugins.inference.runs import open_run
    from ift.host import PluginHost

    rows = [
        {"instruction": f"Reverse the word: {w}", "input": "", "output": w[::-1]}
        for w in ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "ocean"]
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "recipe.toml").write_text(f"""
[run]
name = "smollm2-folder"
cache = false
[[data]]
source = "jsonl"
path = "data.jsonl"
[template]
name = "{template}"
[model]
adapter = "causal-lm"
name_or_path = "{smollm2_folder}"
device = "cpu"
peft = {{ method = "lora", r = 4, alpha = 8, target_modules = ["q_proj", "v_proj"] }}
[trainer]
name = "sft"
max_steps = 2
batch_size = 4
learning_rate = 1e-3
max_length = 64
[eval]
fraction = 0.25
metrics = ["loss"]
baseline = false
""")
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "recipe.toml"), "--output-dir", str(run)]) == 0
    model_dir = run / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.model_max_length == 64
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    assert im_end in ([eos] if isinstance(eos, int) else eos)
    opened = open_run(run, PluginHost(entry_points=False), device="cpu", merge=True)
    turns = [ift.Message("system", "Answer with one word."), ift.Message("user", "Reverse the word: house")]
    prompt = opened.prompt(turns)
    answer = opened.generate([prompt], max_new_tokens=10)[0]
    messages = [t.to_dict() for t in turns]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    monkeypatch.chdir(tmp_path.parent)
    model = AutoPeftModelForCausalLM.from_pretrained(str(model_dir.resolve()))
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    out = generator(messages, max_new_tokens=10, do_sample=False, eos_token_id=eos)
    assert out[0]["generated_text"][-1]["content"].strip() == answer
