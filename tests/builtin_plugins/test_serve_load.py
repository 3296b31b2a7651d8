"""``ift serve`` under load: concurrent clients, batched decoding, the bounded queue (503 + ``Retry-After``),
``logprobs``, and ``/health`` while the model is busy. Loopback only; every test is bounded in count and time."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from test_serve import KEY, TINY_MODEL, Serving, train

from ift.builtin_plugins.serving.protocol import Sampling

openai = pytest.importorskip("openai")

WORDS = ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen", "cup", "hat", "ice", "kit"]
ALPACA = "### Instruction:\n{}\n\n### Response:\n"
# Larger initial weights than the default: the barely trained model's greedy answer then depends on its prompt,
# so an answer given to the wrong request is seen.
PEAKY_MODEL = TINY_MODEL.replace(
    "max_position_embeddings = 128", "max_position_embeddings = 128, initializer_range = 0.5"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("serve-load"), model_config=PEAKY_MODEL)


@pytest.fixture
def serving(run_dir: Path, request: pytest.FixtureRequest) -> Iterator[Serving]:
    options = getattr(request, "param", {})
    server = Serving(run_dir, api_key=KEY, **options)
    yield server
    server.close()


def post(url: str, body: dict[str, Any], timeout: float = 60) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def completion(word: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "prompt": ALPACA.format(f"Uppercase: {word}"),
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }


def paused(serving: Serving) -> threading.Event:
    """Hold the engine's worker before it decodes its next batch, until the returned event is set."""
    engine = serving.server.engine
    go = threading.Event()
    decode = engine._decode

    def held(batch: list[Any]) -> None:
        assert go.wait(30), "the test never released the engine"
        decode(batch)

    engine._decode = held  # type: ignore[method-assign]
    return go


def wait_for(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- the load test ------------------------------------------------------------------------------


@pytest.mark.parametrize("serving", [{"max_batch": 4, "max_queue": 6}], indirect=True)
def test_sixteen_concurrent_clients_get_their_own_answers_or_a_clean_503(serving: Serving):
    url = serving.url + "/v1/completions"
    expected = {}
    for word in WORDS:  # each prompt alone first: the answer greedy decoding gives it in a batch of one
        status, body, _ = post(url, completion(word))
        assert status == 200
        expected[word] = body["choices"][0]["text"]
    assert len(set(expected.values())) >= 8, "the prompts must have different answers"
    batches_before = serving.server.engine.batches

    health: list[tuple[int, float]] = []
    stop = threading.Event()

    def poll_health() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(serving.url + "/health", timeout=10) as response:
                health.append((response.status, time.perf_counter() - started))
            time.sleep(0.01)

    def client(word: str) -> list[tuple[int, str | None, str | None]]:
        results = []
        for _ in range(3):
            status, body, headers = post(url, completion(word))
            if status == 200:
                results.append((200, body["choices"][0]["text"], None))
            else:
                results.append((status, body["error"]["code"], headers.get("Retry-After")))
        return results

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = dict(zip(WORDS, pool.map(client, WORDS), strict=True))
    finally:
        stop.set()
        poller.join(timeout=10)

    total = sum(len(results) for results in answers.values())
    assert total == 16 * 3  # none lost: every request came back with an answer or a refusal
    for word, results in answers.items():
        for status, text, retry_after in results:
            if status == 200:
                assert text == expected[word], f"{word!r} got another request's answer"
            else:
                assert (status, text) == (503, "server_busy") and retry_after is not None
                assert int(retry_after) >= 1
    assert sum(1 for results in answers.values() for r in results if r[0] == 200) >= 16
    assert serving.server.engine.largest_batch > 1  # requests waiting together were decoded together
    assert serving.server.engine.batches - batches_before < total
    assert health and all(status == 200 for status, _ in health)
    assert max(seconds for _, seconds in health) < 5


# --- batching ----------------------------------------------------------------------------------


def test_a_batch_gives_every_row_what_it_would_get_alone(serving: Serving):
    served, engine = serving.served, serving.server.engine
    prompts = [ALPACA.format("Uppercase: dog"), "abc", ALPACA.format("Uppercase: a much longer instruction")]
    settings = [
        Sampling(max_tokens=3),
        Sampling(max_tokens=12, temperature=0.9, seed=7),
        Sampling(max_tokens=6, stop=["E"]),
    ]

    def answers(together: bool) -> list[tuple[str, int, str | None]]:
        jobs = [
            served.new_job(served.encode(p), s, template_stops=False) for p, s in zip(prompts, settings, strict=True)
        ]
        for group in [jobs] if together else [[job] for job in jobs]:
            engine._decode(group)
        out = []
        for job in jobs:
            pieces = list(job.pieces())
            out.append(("".join(p.text for p in pieces), pieces[-1].completion_tokens, pieces[-1].finish_reason))
        return out

    alone, together = answers(False), answers(True)
    assert together == alone
    assert alone[0][1] <= 3 and alone[1][1] <= 12 and alone[2][1] <= 6  # each row's own max_tokens
    assert "E" not in alone[2][0]  # and its own stop text


def test_a_failing_batch_answers_500_and_the_server_keeps_serving(serving: Serving):
    engine = serving.server.engine
    decode = engine._decode

    def broken(batch: list[Any]) -> None:
        engine._decode = decode  # type: ignore[method-assign]
        for job in batch:
            job.decoder.done = True  # as if the failure came after the last token was picked
        raise RuntimeError("out of memory")

    engine._decode = broken  # type: ignore[method-assign]
    status, body, _ = post(serving.url + "/v1/completions", completion("dog"), timeout=20)
    assert status == 500 and body["error"]["message"] == "internal error: RuntimeError"
    assert post(serving.url + "/v1/completions", completion("dog"))[0] == 200


def test_a_first_token_that_stops_at_once_is_an_empty_answer(serving: Serving):
    served = serving.served
    job = served.new_job(served.encode("abc"), Sampling(max_tokens=4), template_stops=False)
    job.decoder.stop_ids = set(range(1024))  # whatever is picked first ends the answer
    job.decoder.logprobs = 1
    serving.server.engine._decode([job])
    pieces = list(job.pieces())
    assert [(p.text, p.completion_tokens, p.finish_reason, p.logprobs) for p in pieces] == [("", 1, "stop", [])]


# --- the bounded queue -------------------------------------------------------------------------


@pytest.mark.parametrize("serving", [{"max_batch": 1, "max_queue": 2}], indirect=True)
def test_a_full_queue_is_503_with_retry_after_and_health_still_answers(serving: Serving):
    go = paused(serving)
    engine = serving.server.engine
    url = serving.url + "/v1/completions"
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(post, url, completion("dog"))
        wait_for(lambda: engine.load()["running"] == 1)
        waiting = [pool.submit(post, url, completion(w)) for w in ("cat", "sun")]
        wait_for(lambda: engine.load()["waiting"] == 2)
        status, body, headers = post(url, completion("owl"))
        assert status == 503 and body["error"]["code"] == "server_busy"
        assert "--max-queue" in body["error"]["message"] and int(headers["Retry-After"]) >= 1
        started = time.perf_counter()
        with urllib.request.urlopen(serving.url + "/health", timeout=5) as response:
            load = json.loads(response.read())
        assert time.perf_counter() - started < 2
        assert load == {"status": "ok", "model": "tiny", "waiting": 2, "running": 1, "max_queue": 2, "max_batch": 1}
        client = openai.OpenAI(base_url=serving.url + "/v1", api_key=KEY, max_retries=0, timeout=10)
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model="tiny", prompt="x", max_tokens=1)
        assert info.value.status_code == 503
        go.set()
        assert [f.result()[0] for f in [running, *waiting]] == [200, 200, 200]


@pytest.mark.parametrize("serving", [{"max_batch": 1}], indirect=True)
def test_a_request_whose_client_went_away_is_never_decoded(serving: Serving):
    go = paused(serving)
    engine = serving.server.engine
    url = serving.url + "/v1/completions"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, url, completion("dog"))
        wait_for(lambda: engine.load()["running"] == 1)
        client = openai.OpenAI(base_url=serving.url + "/v1", api_key=KEY, max_retries=0, timeout=0.5)
        with pytest.raises(openai.APITimeoutError):
            client.completions.create(model="tiny", prompt="abc", max_tokens=100)
        wait_for(lambda: engine.load()["waiting"] == 0)  # its request thread saw the connection close
        batches = engine.batches
        go.set()
        assert running.result()[0] == 200
    wait_for(lambda: engine.batches == batches + 1)
    time.sleep(0.3)
    assert engine.batches == batches + 1 and engine.load()["running"] == 0


# --- logprobs ----------------------------------------------------------------------------------


def _first_token_logprobs(serving: Serving, prompt: str) -> Any:
    import torch

    served = serving.served
    with torch.no_grad():
        logits = served.model(input_ids=torch.tensor([served.encode(prompt)])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)


def test_completion_logprobs_are_the_models_own(serving: Serving):
    prompt = ALPACA.format("Uppercase: fig")
    status, body, _ = post(serving.url + "/v1/completions", completion("fig", max_tokens=5, logprobs=3))
    assert status == 200
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert len(logprobs["token_logprobs"]) == len(logprobs["tokens"]) == len(logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0
    expected = _first_token_logprobs(serving, prompt)
    assert math.isclose(logprobs["token_logprobs"][0], float(expected.max()), abs_tol=1e-4)  # greedy: the top
    for token_lp, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert 1 <= len(top) <= 3 and token_lp <= 0  # fewer when alternatives read alike (bytes of one character)
        assert math.isclose(max(top.values()), token_lp, abs_tol=1e-5)  # greedy picks the most likely token
    status, plain, _ = post(serving.url + "/v1/completions", completion("fig", max_tokens=5))
    assert plain["choices"][0]["logprobs"] is None and plain["choices"][0]["text"] == choice["text"]


def test_chat_logprobs_with_top_logprobs_through_the_openai_client(serving: Serving):
    client = serving.client()
    messages = [{"role": "user", "content": "Uppercase: jam"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert all(
        len(t.top_logprobs) == 2
        and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        and bytes(t.bytes) == t.token.encode()
        for t in content
    )
    expected = _first_token_logprobs(serving, ALPACA.format("Uppercase: jam"))
    assert math.isclose(content[0].logprob, float(expected.max()), abs_tol=1e-4)
    streamed = list(
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, logprobs=True, stream=True)
    )
    tokens = [t.token for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert tokens == [t.token for t in content]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"logprobs": 6}, "'logprobs' must be an integer from 0 to 5"),
        ({"logprobs": True}, "'logprobs' must be an integer from 0 to 5"),
    ],
)
def test_bad_completion_logprobs_are_400(serving: Serving, body: dict[str, Any], message: str):
    status, reply, _ = post(serving.url + "/v1/completions", completion("x", **body))
    assert status == 400 and message in reply["error"]["message"]


def test_top_logprobs_without_logprobs_is_400(serving: Serving):
    with pytest.raises(openai.BadRequestError, match="'top_logprobs' needs 'logprobs': true"):
        serving.client().chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], top_logprobs=2
        )
