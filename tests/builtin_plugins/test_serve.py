"""``ift serve``: a tiny tuned run behind the OpenAI-compatible server on 127.0.0.1, driven by the official
``openai`` client (and raw HTTP for what the client cannot send)."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ift.builtin_plugins.serving.model import ServedModel
from ift.builtin_plugins.serving.protocol import RequestError, parse_chat
from ift.builtin_plugins.serving.server import ServerOptions, make_server
from ift.cli import main
from ift.host import PluginHost

openai = pytest.importorskip("openai")

KEY = "test-key-123"
ROWS = [
    {"instruction": f"Uppercase: {w}", "input": "", "output": w.upper()}
    for w in ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen"]
]
TINY_MODEL = (
    '{ model_type = "llama", hidden_size = 32, intermediate_size = 64, num_hidden_layers = 2, '
    "num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 128 }"
)


def train(folder: Path, extra_model: str = "", model_config: str = TINY_MODEL) -> Path:
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "recipe.toml").write_text(f"""
[run]
name = "tiny"
cache = false

[[data]]
source = "jsonl"
path = "data.jsonl"

[template]
name = "alpaca"

[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = {model_config}
{extra_model}

[trainer]
name = "sft"
max_steps = 2
batch_size = 4
max_length = 64

[eval]
fraction = 0.2
metrics = ["loss"]
baseline = false
""")
    out = folder / "run"
    assert main(["run", str(folder / "recipe.toml"), "--output-dir", str(out)]) == 0
    return out


class Serving:
    """A server on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, run_dir: Path, **options: object) -> None:
        self.served = ServedModel(run_dir, PluginHost(entry_points=False), device="cpu")
        self.server = make_server(self.served, ServerOptions(model_id="tiny", **options), "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Serving]:
    serving = Serving(train(tmp_path_factory.mktemp("serve")), api_key=KEY)
    yield serving
    serving.close()


def raw(url: str, data: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_chat_completion_returns_text_and_usage(server: Serving):
    reply = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Uppercase: dog"}], max_tokens=5
    )
    assert reply.object == "chat.completion" and reply.model == "tiny" and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    prompt = "### Instruction:\nUppercase: dog\n\n### Response:\n"  # the run's alpaca template
    assert reply.usage.prompt_tokens == len(prompt.encode())  # byte-level tokenizer: one token per byte
    assert 1 <= reply.usage.completion_tokens <= 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_greedy_chat_matches_the_prompt_rendered_by_the_run_template(server: Serving):
    client = server.client()
    messages = [{"role": "user", "content": "Uppercase: cat"}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
    prompt = "### Instruction:\nUppercase: cat\n\n### Response:\n"
    completion = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].text == chat.choices[0].message.content
    assert completion.usage.prompt_tokens == chat.usage.prompt_tokens


def test_completion_stops_at_max_tokens_and_stop_string(server: Serving):
    client = server.client()
    long = client.completions.create(model="tiny", prompt="abc", max_tokens=3, temperature=0.8, seed=1)
    assert long.usage.completion_tokens <= 3
    if long.choices[0].finish_reason == "length":
        assert long.usage.completion_tokens == 3
    text = long.choices[0].text
    if text:
        cut = client.completions.create(
            model="tiny", prompt="abc", max_tokens=3, temperature=0.8, seed=1, stop=[text[-1]]
        )
        assert cut.choices[0].finish_reason == "stop" and text[-1] not in cut.choices[0].text


def test_streaming_chat_sends_deltas_that_add_up_to_the_answer(server: Serving):
    client = server.client()
    messages = [{"role": "user", "content": "Uppercase: sun"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_models_and_health(server: Serving):
    assert [m.id for m in server.client().models.list()] == ["tiny"]
    assert raw(server.url + "/health", key=None) == (
        200,
        {"status": "ok", "model": "tiny", "waiting": 0, "running": 0, "max_queue": 64, "max_batch": 8},
    )


def test_wrong_or_missing_token_is_401(server: Serving):
    with pytest.raises(openai.AuthenticationError) as info:
        server.client(key="wrong").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    status, body = raw(server.url + "/v1/models", key=None)
    assert status == 401 and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "tiny"}, "'messages' must be a non-empty list"),
        ({"model": "tiny", "messages": "hello"}, "'messages' must be a non-empty list"),
        ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, "messages[0].content must be a string"),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            "'temperature' must be a number",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "'max_tokens' must be a positive integer",
        ),
    ],
)
def test_malformed_request_is_400_with_a_clear_message(server: Serving, body: dict, message: str):
    with pytest.raises(openai.BadRequestError) as info:
        server.client().post("/chat/completions", body=body, cast_to=object)
    assert info.value.status_code == 400 and message in info.value.message


def test_invalid_json_is_400(server: Serving):
    status, body = raw(server.url + "/v1/chat/completions", data=b'{"messages": [')
    assert status == 400 and "not valid JSON" in body["error"]["message"]


def test_unknown_model_is_404(server: Serving):
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])


def test_log_has_no_prompt_text_by_default(server: Serving, caplog):
    secret = "Uppercase: zebra-secret"
    with caplog.at_level(logging.INFO, logger="ift.serve"):
        server.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": secret}], max_tokens=2
        )
        deadline = time.time() + 5  # the server thread logs after the response is sent
        while time.time() < deadline and not any(
            r.name == "ift.serve" and "200" in r.getMessage() for r in caplog.records
        ):
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "ift.serve"]
    assert any(
        line.startswith("POST /v1/chat/completions 200 ") and "prompt_tokens=" in line and "completion_tokens=" in line
        for line in lines
    ), lines
    assert not any("zebra-secret" in line for line in lines)
    server.server.options.log_prompts = True
    try:
        with caplog.at_level(logging.INFO, logger="ift.serve"):
            server.client().chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": secret}], max_tokens=2
            )
            deadline = time.time() + 5
            while time.time() < deadline and not any("zebra-secret" in r.getMessage() for r in caplog.records):
                time.sleep(0.05)
    finally:
        server.server.options.log_prompts = False
    assert any("zebra-secret" in r.getMessage() for r in caplog.records)


def test_parse_chat_rejects_a_conversation_ending_with_the_assistant():
    with pytest.raises(RequestError, match="last message must not be an assistant"):
        parse_chat(
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            served_model="m",
            default_max_tokens=8,
            max_tokens_cap=8,
        )


def test_lora_run_is_served(tmp_path: Path):
    run_dir = train(tmp_path, extra_model='peft = { method = "lora", r = 4, alpha = 8 }')
    assert (run_dir / "model" / "adapter_config.json").is_file()
    serving = Serving(run_dir)  # no api_key: any token is accepted
    try:
        reply = serving.client(key="anything").chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Uppercase: owl"}], max_tokens=3
        )
        assert reply.usage.completion_tokens >= 1 and reply.choices[0].finish_reason in ("stop", "length")
    finally:
        serving.close()


def test_serve_command_refuses_a_missing_key_variable(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.delenv("IFT_TEST_NO_SUCH_KEY", raising=False)
    assert main(["serve", str(tmp_path), "--api-key-env", "IFT_TEST_NO_SUCH_KEY"]) == 5
    assert "IFT_TEST_NO_SUCH_KEY is not set" in capsys.readouterr().err


def test_a_prompt_longer_than_the_trained_length_keeps_its_last_tokens(server: Serving):
    # the run trained with max_length = 64 on a 128-position model: a 200-token prompt is cut to its last 64 tokens
    # (where the answer starts), as `ift generate` cuts it, instead of being refused or run at the model's maximum
    assert server.served.prompt_limit == 64
    assert len(server.served.encode("x" * 200)) == 64
    reply = server.client().completions.create(model="tiny", prompt="x" * 200, max_tokens=2)
    assert reply.usage.prompt_tokens == 64
    alone = server.client().completions.create(model="tiny", prompt="x" * 64, max_tokens=2)
    assert reply.choices[0].text == alone.choices[0].text


@pytest.mark.parametrize(
    ("template", "prompt", "stops"),
    [
        ({"name": "chatml"}, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", ["<|im_end|>"]),
        ({"name": "chat"}, None, None),
        ({"name": "jinja", "path": "t.jinja"}, "Q: hi\nA: ", ["<|endoftext|>"]),
    ],
)
def test_renderer_is_rebuilt_from_resolved_json(
    tmp_path: Path, template: dict, prompt: str | None, stops: list[str] | None
):
    from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer
    from ift.builtin_plugins.serving.model import build_renderer, stop_texts
    from ift.records import InstructionRecord, Message

    recipe_dir, run_dir = tmp_path / "recipe", tmp_path / "run"
    recipe_dir.mkdir()
    run_dir.mkdir()
    (recipe_dir / "t.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'user' %}Q: {{ m.content }}\nA: "
        "{% else %}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}"
        "\n{% endif %}{% endfor %}"
    )
    (run_dir / "resolved.json").write_text(json.dumps({"template": template}))
    tokenizer = build_byte_tokenizer()
    renderer = build_renderer(run_dir, PluginHost(entry_points=False), recipe_dir)
    renderer.bind(tokenizer)
    record = InstructionRecord("r", "s", [Message("user", "hi"), Message("assistant", "")])
    if prompt is None:  # the tokenizer's own chat template, with its generation prompt
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
    assert renderer.prompt(record) == prompt
    if stops is not None:
        assert stop_texts(renderer) == stops


def test_serve_command_end_to_end(server: Serving, tmp_path: Path):
    """The real ``ift serve`` process: prints its address, reads the key from the environment."""
    import os
    import subprocess
    import sys

    run_dir = server.served.run_dir
    env = {**os.environ, "IFT_TEST_SERVE_KEY": KEY, "IFT_DISABLE_ENTRY_POINTS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ift.cli",
            "serve",
            str(run_dir),
            "--port",
            "0",
            "--api-key-env",
            "IFT_TEST_SERVE_KEY",
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []  # the server's log, read as it is written (a line is logged just after its response)
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        line = ""
        while "serving model" not in line:
            line = process.stdout.readline()
            assert line, "".join(lines)
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and KEY not in line
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=30)
        reply = client.chat.completions.create(
            model=run_dir.name, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.model == run_dir.name and reply.usage.prompt_tokens > 0
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
        deadline = time.monotonic() + 10
        while "GET /v1/models 401" not in "".join(lines) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)
        reader.join(timeout=10)
    log = "".join(lines)
    assert "POST /v1/chat/completions 200" in log and "GET /v1/models 401" in log
