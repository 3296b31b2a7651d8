"""The OpenAI wire format: validating request bodies and shaping responses. Pure Python (no torch), so it is
cheap to import and to test."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_STOP = 4
MAX_TOP_LOGPROBS_CHAT = 20  # the OpenAI API's limits on alternatives per token
MAX_LOGPROBS_COMPLETION = 5


class RequestError(ValueError):
    """A request the client must fix; becomes an OpenAI-style error body with ``status``."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(
    message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {...}}`` as the OpenAI API returns it (the official client reads ``message`` from it)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class Sampling:
    """How to generate: greedy when ``temperature`` is 0."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class CompletionRequest:
    """A validated request for either endpoint: ``messages`` for chat, ``prompt`` for completions."""

    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    logprobs: int | None = None
    """``None``: no log-probabilities; otherwise how many alternatives to report per token (0 or more)."""


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a number, got {type(value).__name__}", param=key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low:g} and {high:g}, got {value}", param=key)
    return float(value)


def _sampling(body: dict[str, Any], default_max_tokens: int, max_tokens_cap: int) -> Sampling:
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key, default_max_tokens)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(f"'{key}' must be a positive integer, got {max_tokens!r}", param=key)
    if max_tokens > max_tokens_cap:
        raise RequestError(
            f"'{key}' is {max_tokens}; this server allows at most {max_tokens_cap} (ift serve --max-tokens)", param=key
        )
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
        raise RequestError(f"'stop' must be a string or a list of at most {MAX_STOP} strings", param="stop")
    n = body.get("n", 1)
    if n not in (None, 1):
        raise RequestError("only n = 1 is supported", param="n")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("'seed' must be an integer", param="seed")
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise RequestError("'top_p' must be greater than 0", param="top_p")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
        top_p=top_p,
        stop=[s for s in stop if s],
        seed=seed,
    )


def _count(body: dict[str, Any], key: str, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise RequestError(f"'{key}' must be an integer from 0 to {high}, got {value!r}", param=key)
    return value


def _logprobs_asked(body: dict[str, Any]) -> int | None:
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise RequestError("'logprobs' must be true or false", param="logprobs")
    top = _count(body, "top_logprobs", MAX_TOP_LOGPROBS_CHAT)
    if top is not None and not wanted:
        raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if wanted else None


def _content(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text parts can be served by a text model
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(
                    f"messages[{index}].content: only text parts are supported", param=f"messages[{index}].content"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(
        f"messages[{index}].content must be a string, got "
        f"{type(content).__name__ if content is not None else 'nothing'}",
        param=f"messages[{index}].content",
    )


def _common(body: Any, served_model: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    if model and model != served_model:
        raise RequestError(
            f"the model {model!r} does not exist; this server serves {served_model!r}",
            param="model",
            status=404,
            code="model_not_found",
        )
    if not isinstance(body.get("stream", False), bool):
        raise RequestError("'stream' must be true or false", param="stream")
    return body


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def parse_chat(body: Any, *, served_model: str, default_max_tokens: int, max_tokens_cap: int) -> CompletionRequest:
    """Validate a ``/v1/chat/completions`` body; ``RequestError`` names the first bad field."""
    body = _common(body, served_model)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
        role = message.get("role")
        if role == "developer":  # the newer name of the system role
            role = "system"
        if role not in ROLES:
            raise RequestError(
                f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}", param=f"messages[{i}].role"
            )
        parsed.append({"role": role, "content": _content(message, i)})
    if parsed[-1]["role"] == "assistant":
        raise RequestError(
            "the last message must not be an assistant message: the model writes the next assistant turn",
            param="messages",
        )
    return CompletionRequest(
        sampling=_sampling(body, default_max_tokens, max_tokens_cap),
        stream=body.get("stream", False),
        include_usage=_include_usage(body),
        messages=parsed,
        logprobs=_logprobs_asked(body),
    )


def parse_completion(
    body: Any, *, served_model: str, default_max_tokens: int, max_tokens_cap: int
) -> CompletionRequest:
    """Validate a ``/v1/completions`` body (one prompt string, used as is: no template)."""
    body = _common(body, served_model)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("'prompt' must be a non-empty string (one prompt per request)", param="prompt")
    return CompletionRequest(
        sampling=_sampling(body, default_max_tokens, max_tokens_cap),
        stream=body.get("stream", False),
        include_usage=_include_usage(body),
        prompt=prompt,
        logprobs=_count(body, "logprobs", MAX_LOGPROBS_COMPLETION),
    )


# --- responses ---------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(entries: list[Any]) -> dict[str, Any]:
    """A chat choice's ``logprobs``: ``content`` lists each token with its log-probability, its UTF-8 bytes
    and the alternatives asked for (``entries`` are :class:`~.decoding.TokenLogprob`)."""

    def one(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries],
        "refusal": None,
    }


def completion_logprobs(entries: list[Any], offset: int = 0) -> dict[str, Any]:
    """A completion choice's ``logprobs`` (the legacy shape): parallel lists of tokens, their log-probabilities,
    the alternatives (``{token: logprob}``, or ``None`` when none were asked) and each token's character
    offset in the completion text (``offset``: where this chunk starts, when streaming)."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_top_dict(e.top) if e.top else None for e in entries],
        "text_offset": offsets,
    }


def _top_dict(top: list[tuple[str, float]]) -> dict[str, float]:
    """``{token: logprob}``, most likely first; tokens that read alike (single bytes of one character all
    decode as U+FFFD) keep the likeliest one's figure."""
    out: dict[str, float] = {}
    for token, logprob in top:
        out.setdefault(token, logprob)
    return out


def chat_response(
    rid: str,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_response(
    rid: str,
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def stream_chunk(
    chat: bool,
    rid: str,
    model: str,
    text: str | None,
    finish_reason: str | None,
    *,
    first: bool = False,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One server-sent event's payload: a content delta (with its tokens' ``logprobs`` when asked), or the
    final chunk with ``finish_reason``."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
        }
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def usage_chunk(chat: bool, rid: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The extra last chunk sent when the client asked ``stream_options = {"include_usage": true}``."""
    return {
        "id": rid,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }
