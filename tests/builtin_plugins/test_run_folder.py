"""The run folder in other tools: the saved chat template renders exactly ift's prompts and training texts,
generation_config stops at the trained end-of-turn tokens, model_max_length is the trained context, a
transformers pipeline answers as ``ift generate`` does, and a LoRA folder loads with AutoPeftModelForCausalLM
from any working directory and after the run folder moved."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer
from ift.builtin_plugins.chat_export import chat_template_for, probe_conversations, verify_chat_template
from ift.builtin_plugins.inference.runs import conversation_prompt
from ift.builtin_plugins.renderers import AlpacaRenderer, ChatMLRenderer, JinjaFileRenderer, PlainRenderer
from ift.cli import main

USER_TEMPLATE = (
    "{# a comment #}\n"
    "{% for m in messages %}\n"
    "  {% if m.role == 'system' %}[{{ m.content | trim }}]\n"
    "  {%- elif m.role == 'user' %}\n"
    "Q: {{ m.content }}\n"
    "A: {% else %}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}\n"
    "  {% endif %}\n"
    "{% endfor %}{% raw %}{% literally %}{% endraw %}\n"
)


def conversations() -> list[list[ift.Message]]:
    m = ift.Message
    rows = list(probe_conversations())
    for i in range(12):
        turns = [m("system", f"sys {i}\n")] if i % 3 == 0 else []
        for j in range(1 + i % 3):
            turns += [m("user", f"question {i}.{j}\n\n### Input:\nx{' ' * j}"), m("assistant", f"answer {i}.{j}")]
        rows.append(turns)
    return rows


def renderers(tmp_path: Path) -> list[object]:
    (tmp_path / "user.jinja").write_text(USER_TEMPLATE)
    made = [cls(cls.Config(), base_dir=tmp_path) for cls in (AlpacaRenderer, ChatMLRenderer, PlainRenderer)]
    made.append(JinjaFileRenderer(JinjaFileRenderer.Config(path="user.jinja"), base_dir=tmp_path))
    return made


def test_every_text_template_becomes_an_equal_chat_template(tmp_path: Path) -> None:
    tokenizer = build_byte_tokenizer()
    for renderer in renderers(tmp_path):
        renderer.bind(tokenizer)
        exported = chat_template_for(renderer, tokenizer)
        assert exported.template is not None, exported.origin
        assert verify_chat_template(exported.template, tokenizer, renderer, conversations()) is None
        turns = [ift.Message("system", "Be brief."), ift.Message("user", "Name a colour.")]
        got = tokenizer.apply_chat_template(
            [t.to_dict() for t in turns], chat_template=exported.template, tokenize=False, add_generation_prompt=True
        )
        assert got == conversation_prompt(renderer, turns)


def test_the_comparison_catches_a_different_template(tmp_path: Path) -> None:
    tokenizer = build_byte_tokenizer()
    renderer = PlainRenderer(PlainRenderer.Config(), base_dir=tmp_path)
    renderer.bind(tokenizer)
    # the byte tokenizer's own ChatML template is what runs trained with `plain` used to save
    assert "differs" in (verify_chat_template(tokenizer.chat_template, tokenizer, renderer, conversations()) or "")


def test_templates_a_chat_template_cannot_express_export_none(tmp_path: Path) -> None:
    tokenizer = build_byte_tokenizer()
    (tmp_path / "rec.jinja").write_text(
        "{{ record.id }}{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    )
    (tmp_path / "flt.jinja").write_text(
        "{% for m in messages %}{% generation %}{{ m.content | shout }}{% endgeneration %}{% endfor %}"
    )

    def prepare(env: object) -> None:
        env.filters["shout"] = str.upper  # type: ignore[attr-defined]

    rec = JinjaFileRenderer(JinjaFileRenderer.Config(path="rec.jinja"), base_dir=tmp_path)
    flt = JinjaFileRenderer(JinjaFileRenderer.Config(path="flt.jinja"), base_dir=tmp_path, prepare_jinja_env=prepare)
    for renderer, why in ((rec, "record"), (flt, "'shout'")):
        renderer.bind(tokenizer)
        exported = chat_template_for(renderer, tokenizer)
        assert exported.template is None and why in exported.origin


TINY = (
    '{ model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, '
    "num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 256 }"
)
ROWS = [
    {"instruction": f"Uppercase: {w}", "input": "", "output": w.upper()}
    for w in ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen"]
]


def make_run(folder: Path, *, template: str, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "recipe.toml").write_text(f"""
[run]
name = "folder"
cache = false

[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
name = "{template}"

[model]
adapter = "causal-lm"
device = "cpu"
{model}

[trainer]
name = "sft"
max_steps = 2
batch_size = 4
learning_rate = 1e-2
max_length = 96

[eval]
fraction = 0.25
metrics = ["loss"]
baseline = false
""")
    out = folder / "run"
    assert main(["run", str(folder / "recipe.toml"), "--output-dir", str(out)]) == 0
    return out


def ift_answer(run: Path, messages: list[ift.Message]) -> tuple[str, str]:
    from ift.builtin_plugins.inference.runs import open_run
    from ift.host import PluginHost

    opened = open_run(run, PluginHost(entry_points=False), device="cpu", merge=True)
    prompt = opened.prompt(messages)
    return prompt, opened.generate([prompt], max_new_tokens=12)[0]


@pytest.mark.slow
def test_full_chatml_run_works_in_a_pipeline(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig, pipeline

    run = make_run(tmp_path / "a", template="chatml", model=f'tokenizer = "byte-level"\nfrom_config = {TINY}')
    model_dir = run / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.model_max_length == 96
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    assert set(eos) == {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}
    turns = [ift.Message("system", "Shout."), ift.Message("user", "Uppercase: cat")]
    prompt, answer = ift_answer(run, turns)
    assert (
        tokenizer.apply_chat_template([t.to_dict() for t in turns], tokenize=False, add_generation_prompt=True)
        == prompt
    )
    generator = pipeline("text-generation", model=str(model_dir), device="cpu")
    out = generator([t.to_dict() for t in turns], max_new_tokens=12, do_sample=False)
    assert out[0]["generated_text"][-1]["content"].strip() == answer
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model_folder"]["chat_template"]["saved"] is True


@pytest.mark.slow
def test_lora_plain_run_loads_from_anywhere_and_after_a_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    base = tmp_path / "base"  # a "pretrained" base folder outside the run
    tokenizer = build_byte_tokenizer()
    config = AutoConfig.for_model(
        "llama",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run = make_run(
        tmp_path / "b",
        template="plain",
        model=f'name_or_path = "{base}"\npeft = {{ method = "lora", r = 4, alpha = 8 }}',
    )
    saved = AutoTokenizer.from_pretrained(run / "model")
    turns = [ift.Message("user", "Uppercase: dog")]
    prompt, answer = ift_answer(run, turns)
    assert (
        saved.apply_chat_template([t.to_dict() for t in turns], tokenize=False, add_generation_prompt=True)
        == prompt
        == "Uppercase: dog\n"
    )
    assert GenerationConfig.from_pretrained(run / "model").eos_token_id == saved.eos_token_id
    adapter = json.loads((run / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base.resolve())
    facts = json.loads((run / "manifest.json").read_text())["model_folder"]
    assert facts["base_generation_config_stops"] is True  # plain: the base's EOS is the only stop
    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    shutil.move(str(run), moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert os.getcwd() != str(moved / "model")
    model = AutoPeftModelForCausalLM.from_pretrained(str(moved / "model"))
    ids = saved(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(
        input_ids=ids,
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=saved.eos_token_id,
        pad_token_id=saved.pad_token_id,
    )
    assert saved.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip() == ift_answer(moved, turns)[1]


@pytest.mark.slow
def test_lora_base_built_from_a_config_loads_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import GenerationConfig

    run = make_run(
        tmp_path / "c",
        template="chatml",
        model=f'tokenizer = "byte-level"\nfrom_config = {TINY}\npeft = {{ method = "lora", r = 4, alpha = 8 }}',
    )
    monkeypatch.chdir(tmp_path)
    model = AutoPeftModelForCausalLM.from_pretrained(str(run / "model"))
    # peft's generate uses the base's generation config: the base inside the folder carries the trained stops
    tokenizer = build_byte_tokenizer()
    assert set(model.generation_config.eos_token_id) == {
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.eos_token_id,
    }
    assert GenerationConfig.from_pretrained(run / "model").eos_token_id == model.generation_config.eos_token_id
    moved = tmp_path / "moved"
    shutil.move(str(run), moved)
    assert ift_answer(moved, [ift.Message("user", "hi")])[0].endswith("<|im_start|>assistant\n")


def test_lm_eval_task_script_writes_the_eval_set(tmp_path: Path) -> None:
    import importlib.util

    import yaml
    from transformers import GenerationConfig

    run = tmp_path / "run"
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(run / "model")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, im_end]).save_pretrained(run / "model")
    records = [
        ift.InstructionRecord("1", "s", [ift.Message("user", "Q1"), ift.Message("assistant", "A1")]),
        ift.InstructionRecord(
            "2", "s", [ift.Message("system", "S"), ift.Message("user", "Q2"), ift.Message("assistant", "A2")]
        ),
    ]
    (run / "data").mkdir()
    (run / "data" / "eval.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    script = Path(__file__).parents[2] / "examples" / "lm_eval" / "make_task.py"
    spec = importlib.util.spec_from_file_location("make_task", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = yaml.safe_load(module.main(run, tmp_path / "tasks").read_text())
    assert task["generation_kwargs"]["until"] == ["<|endoftext|>", "<|im_end|>"]
    assert task["metric_list"][0]["regexes_to_ignore"] == [r"^\s+", r"\s+$"]
    rows = [json.loads(line) for line in (tmp_path / "tasks" / "ift_eval.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": "Q1", "target": "A1"}]  # the system-prompt record is left out (and counted)
