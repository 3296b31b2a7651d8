"""Generation through any OpenAI-compatible HTTP endpoint (OpenAI, vLLM, llama.cpp's server, ``ift serve``...),
for the builders that generate (``self-instruct``).

Plain HTTP from the standard library (no client package needed): ``POST {base_url}/completions`` (or
``/chat/completions`` with the prompt as one user message). The key is read only from the environment variable
the recipe names (``api_key_env``, default ``OPENAI_API_KEY``); it is sent as ``Authorization: Bearer`` and
never written anywhere: server messages quoted in errors have it blanked out.

- **Retries**: 429, 5xx, timeouts and refused connections are retried ``max_retries`` times, waiting
  ``backoff`` seconds doubled each time (at most ``max_backoff``), or the server's ``Retry-After``.
- **Rate limit**: ``requests_per_minute`` spaces the starts of requests evenly.
- **Budget**: ``max_requests`` caps the HTTP requests (retries included) one build sends; when it is spent,
  :class:`RequestBudgetSpent` is raised and the builder stops cleanly, keeping its state.
- **Resumability**: every answer is appended to a response log in the builder's work folder, keyed by the
  request body, so a build run again re-sends nothing it already got (and resumes exactly, even when the
  endpoint samples).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

import ift

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_RETRIED = {408, 409, 429, 500, 502, 503, 504}
#: Settings that do not change what is generated (left out of the builder's resume check).
TRANSPORT_KEYS = (
    "api_key_env",
    "timeout",
    "max_retries",
    "backoff",
    "max_backoff",
    "requests_per_minute",
    "max_requests",
    "concurrency",
)


class OpenAIBackendConfig(ift.ComponentConfig):
    base_url: str = Field(
        description="The endpoint's API root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (ift serve)."
    )
    model: str = Field(description="The model name the endpoint serves.")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="The environment variable holding the API key (unset: no Authorization header is sent).",
    )
    api: Literal["completions", "chat"] = Field(
        "completions", description="completions: the prompt is continued as is; chat: it is sent as one user message."
    )
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for one answer.")
    max_retries: int = Field(5, ge=0)
    backoff: float = Field(1.0, ge=0, description="First wait before a retry, in seconds (doubled each time).")
    max_backoff: float = Field(60.0, ge=0)
    requests_per_minute: float | None = Field(None, gt=0)
    max_requests: int | None = Field(
        None, gt=0, description="HTTP requests one build may send (retries included); the build stops cleanly at it."
    )
    concurrency: int = Field(1, ge=1, le=64, description="Requests in flight at once.")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):  # never echo the value: it may be the key itself, pasted here
            raise ValueError("must be the NAME of an environment variable (letters, digits, _), not the key")
        return value

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials: put the key in the environment variable api_key_env names")
        return value.rstrip("/")


class RequestBudgetSpent(ift.DataError):
    """``max_requests`` requests were sent; the build stops here and continues when run again."""

    def __init__(self, sent: int) -> None:
        super().__init__(f"the request budget is spent: {sent} requests sent (max_requests = {sent})")
        self.sent = sent


class OpenAIGenerator:
    """``generator(prompts, *, max_new_tokens, stop) -> completions`` over an OpenAI-compatible endpoint."""

    def __init__(self, config: OpenAIBackendConfig, *, cache_path: Path, owner: str) -> None:
        self.config, self.cache_path, self.owner = config, cache_path, owner
        self._key = os.environ.get(config.api_key_env) or None
        self._lock = threading.Lock()
        self._next_start = 0.0
        self.sent = 0  # HTTP requests sent by this build, retries included
        self.cached = 0  # answers taken from the response log instead
        self._answers = self._load()

    # --- the response log ----------------------------------------------------------------------

    def _load(self) -> dict[str, str]:
        answers: dict[str, str] = {}
        if self.cache_path.is_file():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    answers[entry["request"]] = entry["text"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: that answer is asked for again
        return answers

    def _remember(self, key: str, text: str) -> None:
        with self._lock:
            self._answers[key] = text
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"request": key, "text": text}, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    # --- generating ----------------------------------------------------------------------------

    def __call__(self, prompts: list[str], *, max_new_tokens: int, stop: list[str]) -> list[str]:
        bodies = [self._body(p, max_new_tokens, stop) for p in prompts]
        if self.config.concurrency == 1:
            return [self._answer(b) for b in bodies]
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            futures = [pool.submit(self._answer, b) for b in bodies]
            results, error = [], None
            for future in futures:  # let every request in flight finish (and be logged) before raising
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - re-raised below, the first one wins
                    error = error or exc
            if error is not None:
                raise error
            return results

    def _body(self, prompt: str, max_new_tokens: int, stop: list[str]) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.model,
            "max_tokens": max_new_tokens,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
        }
        if stop:
            body["stop"] = stop[:4]
        if cfg.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _answer(self, body: dict[str, Any]) -> str:
        path = "/chat/completions" if self.config.api == "chat" else "/completions"
        key = hashlib.sha256(json.dumps([self.config.base_url + path, body], sort_keys=True).encode()).hexdigest()
        with self._lock:
            if key in self._answers:
                self.cached += 1
                return self._answers[key]
        reply = self._post(path, body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if self.config.api == "chat" else choice["text"]
            if not isinstance(text, str):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise ift.DataError(
                f"{self.owner}: {self.config.base_url}{path} answered without "
                f"choices[0].{'message.content' if self.config.api == 'chat' else 'text'}"
            ) from None
        self._remember(key, text)
        return text

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        url = cfg.base_url + path
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        wait = cfg.backoff
        for attempt in range(cfg.max_retries + 1):
            self._take_slot()
            retry_after = None
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=cfg.timeout) as response:
                    result: dict[str, Any] = json.loads(response.read())
                    return result
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}: {self._server_message(exc)}"
                if exc.code not in _RETRIED:
                    hint = ""
                    if exc.code in (401, 403):
                        hint = (
                            f" (the environment variable {cfg.api_key_env} is not set)"
                            if not self._key
                            else f" (check the key in {cfg.api_key_env})"
                        )
                    raise ift.DataError(f"{self.owner}: POST {url} failed: {why}{hint}") from None
                retry_after = _seconds(exc.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                why = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
            except ValueError as exc:
                raise ift.DataError(
                    f"{self.owner}: POST {url} answered with something that is not JSON ({exc})"
                ) from None
            if attempt == cfg.max_retries:
                raise ift.DataError(
                    f"{self.owner}: POST {url} failed after {attempt + 1} attempts; the last: {self._redact(why)}"
                )
            time.sleep(min(cfg.max_backoff, retry_after if retry_after is not None else wait))
            wait *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _take_slot(self) -> None:
        """Count the request against the budget and wait for its turn under the rate limit."""
        cfg = self.config
        with self._lock:
            if cfg.max_requests is not None and self.sent >= cfg.max_requests:
                raise RequestBudgetSpent(self.sent)
            self.sent += 1
            now = time.monotonic()
            start = max(now, self._next_start)
            if cfg.requests_per_minute:
                self._next_start = start + 60.0 / cfg.requests_per_minute
        if start > now:
            time.sleep(start - now)

    def _server_message(self, exc: urllib.error.HTTPError) -> str:
        try:
            raw = exc.read().decode("utf-8", "replace")
        except OSError:
            raw = ""
        try:
            message = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw or exc.reason
        return self._redact(str(message)[:300])

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
