"""``self-instruct`` through an OpenAI-compatible endpoint: a real ``ift serve`` on 127.0.0.1 (a tiny run), and a
fault-injecting stub for retries, 429 / 5xx, timeouts, the request budget and a canary key that must never leak."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.builders.openai_backend import OpenAIBackendConfig, OpenAIGenerator
from ift.builtin_plugins.builders.self_instruct import SelfInstructConfig, SelfInstructSource
from ift.cli import main
from ift.host import PluginHost
from ift.recipe import load_recipe

DATA = Path(__file__).resolve().parents[2] / "data" / "builders"
CANARY = "sk-canary-0123456789abcdefghijKLMN"
INSTRUCTIONS = "Compose a brief poem describing the sea.\nList three fruits that are red.\nExplain tides to a child."


class Stub:
    """A local OpenAI-style server answering from a script: each entry is (status, body, headers, delay), taken in
    the order requests arrive, or, for a prompt in ``by_prompt``, that prompt's own entry (requests sent at once
    arrive in any order)."""

    def __init__(self, script: list[tuple[int, Any, dict[str, str], float]] | None = None) -> None:
        self.script = list(script or [])
        self.by_prompt: dict[str, tuple[int, Any, dict[str, str], float]] = {}
        self.in_flight = self.most_in_flight = 0
        lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                stub.auth.append(self.headers.get("Authorization"))
                prompt = body.get("prompt") or body["messages"][0]["content"]
                if prompt in stub.by_prompt:
                    status, reply, headers, delay = stub.by_prompt[prompt]
                else:
                    status, reply, headers, delay = stub.script.pop(0) if stub.script else (200, None, {}, 0.0)
                with lock:
                    stub.in_flight += 1
                    stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
                time.sleep(delay)
                with lock:
                    stub.in_flight -= 1
                if reply is None:
                    reply = {
                        "choices": [
                            {"text": " none\nOutput: An answer." if prompt.endswith("Input:") else INSTRUCTIONS}
                        ]
                    }
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    yield server
    server.close()


def build(tmp_path: Path, openai: dict[str, Any], **options: Any) -> SelfInstructSource:
    config = SelfInstructConfig.model_validate(
        {
            "seeds": str(DATA / "seed_tasks.jsonl"),
            "openai": openai,
            "work_dir": str(tmp_path / "work"),
            "prompts_per_round": 2,
            "max_rounds": 1,
            **options,
        }
    )
    return SelfInstructSource(config, source_name="gen", base_dir=tmp_path)


def generator(tmp_path: Path, url: str, **options: Any) -> OpenAIGenerator:
    config = OpenAIBackendConfig.model_validate({"base_url": url, "model": "m", "backoff": 0.01, **options})
    return OpenAIGenerator(config, cache_path=tmp_path / "responses.jsonl", owner="test")


def files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_retries_429_5xx_and_timeouts_then_answers(tmp_path: Path, stub: Stub):
    stub.script = [
        (429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}, 0.0),
        (503, {"error": {"message": "busy"}}, {}, 0.0),
        (200, {"choices": [{"text": "late"}]}, {}, 1.0),  # longer than the timeout: retried
        (200, {"choices": [{"text": "hello"}]}, {}, 0.0),
    ]
    gen = generator(tmp_path, stub.url, timeout=0.3)
    assert gen(["p"], max_new_tokens=5, stop=["\n"]) == ["hello"]
    assert gen.sent == 4 and len(stub.requests) == 4
    assert stub.requests[0] == {
        "model": "m",
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "stop": ["\n"],
        "prompt": "p",
    }


def test_retries_give_up_with_one_clear_line(tmp_path: Path, stub: Stub):
    stub.script = [(500, {"error": {"message": "boom"}}, {}, 0.0)] * 3
    with pytest.raises(ift.DataError, match=r"failed after 3 attempts; the last: HTTP 500: boom"):
        generator(tmp_path, stub.url, max_retries=2)(["p"], max_new_tokens=5, stop=[])


def test_the_key_comes_from_the_environment_and_never_leaks(tmp_path: Path, stub: Stub, monkeypatch):
    monkeypatch.setenv("IFT_TEST_CANARY_KEY", CANARY)
    stub.script = [(401, {"error": {"message": f"Incorrect API key provided: {CANARY}"}}, {}, 0.0)]
    gen = generator(tmp_path, stub.url, api_key_env="IFT_TEST_CANARY_KEY")
    with pytest.raises(ift.DataError) as info:
        gen(["p"], max_new_tokens=5, stop=[])
    assert stub.auth == [f"Bearer {CANARY}"]
    assert "HTTP 401" in str(info.value) and CANARY not in str(info.value) and "***" in str(info.value)
    source = build(tmp_path, {"base_url": stub.url, "model": "m", "api_key_env": "IFT_TEST_CANARY_KEY"})
    records = list(source.records())
    assert records and CANARY not in files_text(tmp_path / "work")
    assert CANARY not in json.dumps(source.config.model_dump(mode="json")) + source.fingerprint()


def test_a_missing_key_is_named_on_401(tmp_path: Path, stub: Stub, monkeypatch):
    monkeypatch.delenv("IFT_TEST_NO_KEY", raising=False)
    stub.script = [(401, {"error": {"message": "no key"}}, {}, 0.0)]
    with pytest.raises(ift.DataError, match="the environment variable IFT_TEST_NO_KEY is not set"):
        generator(tmp_path, stub.url, api_key_env="IFT_TEST_NO_KEY")(["p"], max_new_tokens=5, stop=[])
    assert stub.auth == [None]


def test_rate_limit_spaces_the_requests(tmp_path: Path, stub: Stub):
    gen = generator(tmp_path, stub.url, requests_per_minute=600)  # one request every 0.1 s
    started = time.monotonic()
    gen(["a", "b", "c", "d"], max_new_tokens=5, stop=[])
    assert time.monotonic() - started >= 0.3 and gen.sent == 4


def test_the_budget_stops_the_build_cleanly_and_a_rerun_continues(tmp_path: Path, stub: Stub):
    openai = {"base_url": stub.url, "model": "m", "max_requests": 3}
    first = build(tmp_path, openai)
    with pytest.warns(UserWarning, match=r"request budget spent \(3 requests\); run again to continue"):
        kept_first = list(first.records())
    assert len(stub.requests) == 3 and first.stats["requests"] == {"sent": 3, "from_log": 0}
    assert "stopped early: request budget spent (3 requests)" in first.fingerprint()
    second = build(tmp_path, {**openai, "max_requests": 100})  # the budget is per build
    kept = list(second.records())
    assert second.stats["requests"]["from_log"] == 3 and "stopped" not in second.stats
    assert len(stub.requests) == 3 + second.stats["requests"]["sent"]  # nothing asked twice
    assert len(kept) >= len(kept_first) and kept and second.stats["rounds"] == 1


def test_concurrent_requests_keep_the_prompt_order(tmp_path: Path, stub: Stub):
    gen = generator(tmp_path, stub.url, concurrency=2, api="chat")
    stub.by_prompt = {  # "a" is answered last, whichever request reaches the server first
        "a": (200, {"choices": [{"message": {"content": "slow"}}]}, {}, 0.6),
        "b": (200, {"choices": [{"message": {"content": "fast"}}]}, {}, 0.2),
    }
    assert gen(["a", "b"], max_new_tokens=5, stop=[]) == ["slow", "fast"]
    assert stub.most_in_flight == 2  # both were sent before the first answer came
    assert sorted(r["messages"][0]["content"] for r in stub.requests) == ["a", "b"]
    assert all(r["messages"] == [{"role": "user", "content": r["messages"][0]["content"]}] for r in stub.requests)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('api_key = "abc123"', "looks like a secret"),
        ('api_key_env = "sk-proj-abcdefghijklmnopqrstuvwx"', "looks like a secret"),
        ('api_key_env = "my key value 123"', "must be the NAME of an environment variable"),
        ('base_url = "http://user:pw123@127.0.0.1/v1"', "looks like a secret"),
    ],
)
def test_a_key_in_the_recipe_is_refused_and_not_echoed(tmp_path: Path, table: str, message: str):
    (tmp_path / "r.toml").write_text(f"""
[[data]]
source = "self-instruct"
seeds = "{DATA / "seed_tasks.jsonl"}"

[data.openai]
model = "m"
{table if table.startswith("base_url") else 'base_url = "http://127.0.0.1:9/v1"'}
{table if not table.startswith("base_url") else ""}
""")
    with pytest.raises(ift.RecipeError) as info:
        load_recipe(tmp_path / "r.toml", PluginHost(entry_points=False))
    text = str(info.value)
    assert message in text
    for secret in ("abc123", "sk-proj-abcdefghijklmnopqrstuvwx", "my key value 123", "pw123"):
        assert secret not in text


def test_neither_or_both_generators_is_a_clear_error():
    with pytest.raises(ValueError, match="required: the generating model, as `model`"):
        SelfInstructConfig.model_validate({"seeds": "s.jsonl"})


def test_self_instruct_generates_from_ift_serve(tmp_path: Path, monkeypatch):
    """The whole loop on localhost: a tiny run trained, served by ``ift serve``'s server, and the builder asking
    it (a canary key required by the server) for instructions and instances."""
    from ift.builtin_plugins.serving.model import ServedModel
    from ift.builtin_plugins.serving.server import ServerOptions, make_server

    rows = [{"instruction": f"Task {w}", "input": "", "output": w} for w in ["abc", "dog", "cat", "sun", "owl"]]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.toml").write_text("""
[run]
cache = false
[[data]]
source = "jsonl"
path = "d.jsonl"
[template]
name = "alpaca"
[model]
adapter = "causal-lm"
tokenizer = "byte-level"
from_config = { model_type = "llama", hidden_size = 16, intermediate_size = 32, num_hidden_layers = 1, num_attention_heads = 2, num_key_value_heads = 2, max_position_embeddings = 1024 }
[trainer]
name = "sft"
max_steps = 1
batch_size = 2
[eval]
fraction = 0.2
metrics = ["loss"]
baseline = false
""")
    assert main(["run", str(tmp_path / "r.toml"), "--output-dir", str(tmp_path / "run")]) == 0
    served = ServedModel(tmp_path / "run", PluginHost(entry_points=False), device="cpu")
    server = make_server(served, ServerOptions(model_id="tiny", api_key=CANARY), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("IFT_TEST_CANARY_KEY", CANARY)
    openai = {
        "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "model": "tiny",
        "api_key_env": "IFT_TEST_CANARY_KEY",
        "concurrency": 2,
    }
    try:
        first = build(tmp_path, openai, max_new_tokens=16, instance_max_new_tokens=16)
        records = [(r.id, r.answer) for r in first.records()]
        sent = first.stats["requests"]["sent"]
        assert sent >= 2 and first.stats["rounds"] == 1  # 2 instruction prompts, then one per survivor
        assert server.engine.batches >= 1
        answers = [
            json.loads(line)["text"] for line in (tmp_path / "work" / "responses.jsonl").read_text().splitlines()
        ]
        assert len(answers) == sent and all(isinstance(a, str) for a in answers)
        again = build(tmp_path, openai, max_new_tokens=16, instance_max_new_tokens=16)
        assert [(r.id, r.answer) for r in again.records()] == records
        assert again.stats["requests"] == {"sent": 0, "from_log": 0}  # the state had every decision already
        assert CANARY not in files_text(tmp_path / "work")
    finally:
        server.shutdown()
        server.server_close()
