"""``ift generate`` and ``ift chat`` on a tiny LoRA run, the run's adapter loading its saved model, and the
template checks: the run keeps a copy of its template file, and a template that drifted is refused."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import ift
from ift.cli import cli, main
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
TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'system' %}[{{ m.content }}]\n"
    "{% elif m.role == 'user' %}Q: {{ m.content }}\nA: "
    "{% else %}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}\n{% endif %}{% endfor %}"
)
TINY = (
    '{ model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, '
    "num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 256 }"
)
EOS = "<|endoftext|>"


def make_run(folder: Path) -> Path:
    """A tiny LoRA run whose template is a file next to the recipe."""
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "qa.jinja").write_text(TEMPLATE)
    (folder / "recipe.toml").write_text(f"""
[run]
name = "tiny-lora"
cache = false

[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
path = "qa.jinja"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
device = "cpu"
from_config = {TINY}
peft = {{ method = "lora", r = 4, alpha = 8 }}

[trainer]
name = "sft"
max_steps = 3
batch_size = 4
learning_rate = 1e-2
max_length = 64

[eval]
fraction = 0.25
metrics = ["loss"]
baseline = false
""")
    out = folder / "run"
    assert main(["run", str(folder / "recipe.toml"), "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module")
def opened(lora_run: Path):
    from ift.builtin_plugins.inference.runs import open_run

    return open_run(lora_run, PluginHost(entry_points=False), device="cpu", merge=True)


def prompts_shown(stderr: str) -> list[str]:
    return re.findall(r"--- prompt ---\n(.*?)\n--- end of prompt ---", stderr, flags=re.S)


# --- loading through the adapter -------------------------------------------------------------------


def test_adapter_loads_the_saved_lora_folder_unmerged_with_its_tokenizer(lora_run: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ift.builtin_plugins.inference.runs import build_adapter, read_run

    resolved, _ = read_run(lora_run)
    adapter = build_adapter(resolved, PluginHost(entry_points=False), lora_run)
    model, tokenizer = adapter.load_trained(lora_run / "model")
    assert isinstance(model, PeftModel) and not model.training
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == "<|pad|>"
    # the same weights plain peft loads: base from model/base_model, adapter on top
    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(lora_run / "model" / "base_model"), lora_run / "model"
    ).eval()
    ids = torch.tensor([tokenizer("Q: Uppercase: dog\nA: ")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_run_keeps_a_copy_of_its_template_file(lora_run: Path):
    assert (lora_run / "template" / "qa.jinja").read_text() == TEMPLATE


# --- ift generate ----------------------------------------------------------------------------------


def test_generate_prints_what_adapter_generate_gives_for_the_training_format_prompt(lora_run: Path, opened, capsys):
    import torch

    assert (
        main(["generate", str(lora_run), "Uppercase: dog", "--max-new-tokens", "6", "--device", "cpu", "--show-prompt"])
        == 0
    )
    captured = capsys.readouterr()
    prompt = "Q: Uppercase: dog\nA: "  # the user message through the prompt part of the run's template
    assert prompts_shown(captured.err) == [prompt]
    expected = opened.adapter.generate(
        opened.model, opened.tokenizer, [prompt], max_new_tokens=6, batch_size=1, stop=[EOS]
    )[0]
    assert captured.out == expected + "\n"
    # and independently of the adapter: plain greedy decoding of the same ids, cut at EOS
    ids = torch.tensor([opened.tokenizer(prompt)["input_ids"]])
    out = opened.model.generate(
        input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=opened.tokenizer.pad_token_id
    )[0, ids.shape[1] :].tolist()
    eos = opened.tokenizer.eos_token_id
    out = out[: out.index(eos)] if eos in out else out
    assert captured.out.rstrip("\n") == opened.tokenizer.decode(out, skip_special_tokens=True).strip()


def test_generate_renders_the_system_message_with_the_template(lora_run: Path, capsys):
    assert (
        main(["generate", str(lora_run), "hi", "--system", "be brief", "--max-new-tokens", "1", "--show-prompt"]) == 0
    )
    assert prompts_shown(capsys.readouterr().err) == ["[be brief]\nQ: hi\nA: "]


def test_generate_reads_jsonl_prompts_and_writes_jsonl_answers(lora_run: Path, opened, tmp_path: Path, capsys):
    rows = [
        '"Uppercase: abc"',
        '{"id": "r2", "prompt": "Uppercase: sun"}',
        '{"id": 3, "instruction": "Uppercase:", "input": "map"}',
        '{"messages": [{"role": "user", "content": "Uppercase: red"}, {"role": "assistant", "content": "RED"},'
        ' {"role": "user", "content": "Uppercase: toy"}]}',
    ]
    (tmp_path / "prompts.jsonl").write_text("\n".join(rows) + "\n\n")
    assert (
        main(
            [
                "generate",
                str(lora_run),
                "--input",
                str(tmp_path / "prompts.jsonl"),
                "--max-new-tokens",
                "4",
                "--show-prompt",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert [{k: v for k, v in row.items() if k != "completion"} for row in out] == [
        {"prompt": "Uppercase: abc"},
        {"id": "r2", "prompt": "Uppercase: sun"},
        {"id": 3, "prompt": "Uppercase:\n\nmap"},
        {"prompt": "Uppercase: toy"},
    ]
    rendered = prompts_shown(captured.err)
    assert rendered[2] == "Q: Uppercase:\n\nmap\nA: "
    assert rendered[3] == f"Q: Uppercase: red\nA: RED{EOS}\nQ: Uppercase: toy\nA: "
    assert [row["completion"] for row in out] == opened.generate(rendered, max_new_tokens=4, batch_size=2)


def test_generate_reads_one_prompt_per_line_from_stdin(lora_run: Path, opened, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("Uppercase: fig\n\nUppercase: jam\n"))
    assert main(["generate", str(lora_run), "--max-new-tokens", "3"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["prompt"] for row in out] == ["Uppercase: fig", "Uppercase: jam"]
    expected = opened.generate(["Q: Uppercase: fig\nA: ", "Q: Uppercase: jam\nA: "], max_new_tokens=3)
    assert [row["completion"] for row in out] == expected


def test_generate_names_file_and_line_of_a_bad_prompt_row(lora_run: Path, tmp_path: Path, capsys):
    (tmp_path / "bad.jsonl").write_text(
        '"ok"\n{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
    )
    assert main(["generate", str(lora_run), "--input", str(tmp_path / "bad.jsonl")]) == 3
    assert f"{tmp_path / 'bad.jsonl'}:2: 'messages' must end with a user turn" in capsys.readouterr().err


# --- ift chat --------------------------------------------------------------------------------------


def test_chat_renders_the_history_with_the_run_template_each_turn(lora_run: Path, opened):
    host = PluginHost(entry_points=False)
    host.register_commands(cli)
    result = CliRunner().invoke(
        cli,
        ["chat", str(lora_run), "--max-new-tokens", "4", "--show-prompt"],
        input="Uppercase: cat\nUppercase: dog\n/reset\nUppercase: owl\n/exit\nnot read\n",
        obj={"host": host},
    )
    assert result.exit_code == 0, result.output
    shown = prompts_shown(result.stderr)
    first = opened.generate(["Q: Uppercase: cat\nA: "], max_new_tokens=4, batch_size=1)[0]
    assert shown[0] == "Q: Uppercase: cat\nA: "
    # second turn: the first exchange (with the model's own answer and EOS, as in training) then the new message
    assert shown[1] == f"Q: Uppercase: cat\nA: {first}{EOS}\nQ: Uppercase: dog\nA: "
    assert shown[2] == "Q: Uppercase: owl\nA: "  # after /reset
    assert len(shown) == 3 and "(new conversation)" in result.stderr  # nothing read after /exit
    answers = [opened.generate([prompt], max_new_tokens=4, batch_size=1)[0] for prompt in shown]
    assert result.stdout == "".join(f"{answer}\n" for answer in answers)  # one answer per line off a terminal


def test_chat_drops_the_oldest_exchanges_when_the_context_is_full(lora_run: Path):
    host = PluginHost(entry_points=False)
    host.register_commands(cli)
    # ~40 tokens a turn plus its answer: the run trained with max_length = 64, and a conversation is fitted to
    # that length (not to the model's 256 positions), so every new turn drops the exchange before it
    long = "Uppercase: " + "x" * 20
    result = CliRunner().invoke(
        cli,
        ["chat", str(lora_run), "--max-new-tokens", "20", "--show-prompt"],
        input=f"{long}1\n{long}2\n{long}3\n",
        obj={"host": host},
    )
    assert result.exit_code == 0, result.output
    shown = prompts_shown(result.stderr)
    assert "dropped the oldest 1 exchange(s)" in result.stderr
    assert shown[1].startswith(f"Q: {long}2\n") and f"{long}1" not in shown[1]
    assert shown[2].startswith(f"Q: {long}3\n") and f"{long}2" not in shown[2]


# --- refusing what is not a finished run, and template drift ---------------------------------------


def test_not_a_run_directory_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["generate", str(tmp_path), "hi"]) == 5
    assert f"{tmp_path} is not an ift run directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "hint"),
    [("failed", "it has no trained model"), ("interrupted", "--resume"), ("running", "still running")],
)
def test_unfinished_run_is_refused_with_its_status(lora_run: Path, tmp_path: Path, capsys, status: str, hint: str):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    (run / "status.json").write_text(json.dumps({"status": status, "error": "boom at step 2"}))
    for command in (["generate", str(run), "hi"], ["export", str(run), "--merge"]):
        assert main(command) == 5
        err = capsys.readouterr().err
        assert f"the run did not complete (status {status!r}: boom at step 2)" in err and hint in err
        assert "loading" not in err


def test_edited_template_copy_is_refused_naming_both_hashes(lora_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    recorded = json.loads((run / "manifest.json").read_text())["template"]["hash"]
    (run / "template" / "qa.jinja").write_text(TEMPLATE.replace("A: ", "Answer: "))
    assert main(["generate", str(run), "hi"]) == 5
    err = capsys.readouterr().err
    now = re.search(r"has hash (sha256:[0-9a-f]+)", err)
    assert f"template drift in {run}: the run trained with template hash {recorded}" in err
    assert now and now.group(1) != recorded


def test_run_without_a_template_copy_uses_the_recipe_file_and_checks_it(lora_run: Path, tmp_path: Path, capsys):
    from ift.builtin_plugins.inference.runs import build_renderer, check_template

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    shutil.rmtree(run / "template")  # a run made before copies were kept
    manifest = json.loads((run / "manifest.json").read_text())
    host = PluginHost(entry_points=False)
    recipe_dir = tmp_path / "recipe"
    recipe_dir.mkdir()
    (recipe_dir / "qa.jinja").write_text(TEMPLATE)
    renderer = build_renderer(run, host, recipe_dir)
    assert check_template(renderer, manifest, run) == manifest["template"]["hash"]
    (recipe_dir / "qa.jinja").write_text(TEMPLATE + "\n")  # edited since the run: one more newline
    with pytest.raises(
        Exception,
        match=r"template drift .* trained with template hash sha256:\w+, but .* "
        r"has hash sha256:\w+",
    ):
        check_template(build_renderer(run, host, recipe_dir), manifest, run)


def test_manifest_hash_mismatch_is_refused_by_every_command(lora_run: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["template"]["hash"] = "sha256:0000000000000000"
    (run / "manifest.json").write_text(json.dumps(manifest))
    for command in (["generate", str(run), "hi"], ["export", str(run), "--merge", "-o", str(tmp_path / "x")]):
        assert main(command) == 5
        assert "the run trained with template hash sha256:0000000000000000" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_chat_template_drift_follows_the_tokenizer_saved_with_the_model(tokenizer):
    """``[template] name = "chat"`` hashes the tokenizer's chat_template: a model folder whose tokenizer carries
    another template is refused."""
    import copy

    from ift.builtin_plugins.inference.runs import check_template
    from ift.builtin_plugins.renderers import ChatTemplateRenderer

    trained = ChatTemplateRenderer(ChatTemplateRenderer.Config(), base_dir=Path("."))
    trained.bind(tokenizer)
    manifest = {"template": {"name": "chat", "hash": trained.template_hash()}}
    assert check_template(trained, manifest, Path("run")) == manifest["template"]["hash"]
    changed = copy.deepcopy(tokenizer)
    changed.chat_template = tokenizer.chat_template.replace("<|im_end|>\n", "<|im_end|>\n\n")
    rebuilt = ChatTemplateRenderer(ChatTemplateRenderer.Config(), base_dir=Path("."))
    rebuilt.bind(changed)
    with pytest.raises(
        Exception,
        match=f"trained with template hash {manifest['template']['hash']}, but .* has hash {rebuilt.template_hash()}",
    ):
        check_template(rebuilt, manifest, Path("run"))


def test_generate_fits_its_budget_to_the_models_context(lora_run: Path, opened, capsys):
    # the README's `ift generate RUN "Uppercase: dog"` with a budget over the 256-position context
    assert main(["generate", str(lora_run), "Uppercase: dog", "--max-new-tokens", "1000", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    prompt_tokens = opened.token_count("Q: Uppercase: dog\nA: ")
    assert f"--max-new-tokens 1000 lowered to {256 - prompt_tokens} to fit the model's context" in captured.err
    expected = opened.generate(["Q: Uppercase: dog\nA: "], max_new_tokens=256 - prompt_tokens, batch_size=1)[0]
    assert captured.out == expected + "\n"


def test_chat_fits_its_budget_to_the_models_context(lora_run: Path):
    result = CliRunner().invoke(
        cli,
        ["chat", str(lora_run), "--max-new-tokens", "1000"],
        input="Uppercase: cat\n",
        obj={"host": PluginHost(entry_points=False)},
    )
    assert result.exit_code == 0, result.output
    assert "error" not in result.output


def test_generation_cuts_prompts_at_the_trained_length(lora_run: Path, opened, capsys):
    # the run trained with max_length = 64: a longer prompt is given to the model as its last 64 tokens (where the
    # answer starts), not refused and not left at the model's 256-position maximum
    assert opened.prompt_limit == 64
    long_prompt = "Uppercase: " + "dog " * 100
    text = opened.prompt([ift.Message("user", long_prompt)])
    tokens = opened.token_count(text)
    assert tokens > 64
    assert main(["generate", str(lora_run), long_prompt, "--max-new-tokens", "4", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert (
        f"the prompt is {tokens} tokens; the model is given its last 64 (the length the run was trained with)"
        in captured.err
    )
    seen: list[int] = []
    original = opened.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    opened.model.generate = spy
    try:
        answer = opened.generate([text], max_new_tokens=4, batch_size=1)[0]
    finally:
        opened.model.generate = original
    assert seen == [64]
    assert captured.out == answer + "\n"
