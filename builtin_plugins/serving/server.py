"""The HTTP side of ``ift serve``: the standard library's ``ThreadingHTTPServer`` with OpenAI-compatible routes.

Routes: ``GET /health`` (no auth), ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.
Each connection has its own thread, which validates the request, queues it with the server's
:class:`~.engine.BatchEngine` (503 with ``Retry-After`` when the queue is full) and waits for its own pieces of
text: the model runs only on the engine's worker, so ``/health`` answers at once while it generates.
Every request is logged as one line (method, path, status, duration, token counts); prompt and completion
texts only with ``log_prompts``.
"""

from __future__ import annotations

import hmac
import json
import logging
import select
import socket
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import protocol
from .engine import ClientGone, EngineStopped, QueueFull
from .protocol import RequestError

LOG = logging.getLogger("ift.serve")
MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass
class ServerOptions:
    """What the handler needs besides the model."""

    model_id: str
    api_key: str | None = None
    log_prompts: bool = False
    default_max_tokens: int = 256
    max_tokens_cap: int = 4096
    max_batch: int = 8
    """Requests decoded together in one batch (1: one at a time)."""
    max_queue: int = 64
    """Requests that may wait for the model; one more is answered 503 with ``Retry-After``."""


class OpenAIHandler(BaseHTTPRequestHandler):
    """One request. ``self.server.served`` is the :class:`ServedModel`, ``self.server.options`` the options."""

    server_version = "ift-serve"
    server: Any

    # --- plumbing ------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Silence the base class's access log: :meth:`_log` writes ours."""

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.status = status

    def _log(self, started: float, **extra: Any) -> None:
        texts = ("error", "prompt", "completion")  # counts first, free text last
        ordered = [k for k in extra if k not in texts] + [k for k in texts if k in extra]
        fields = " ".join(f"{k}={extra[k]}" for k in ordered if extra[k] is not None)
        LOG.info(
            "%s %s %s %.3fs%s",
            self.command,
            self.path.split("?", 1)[0],
            getattr(self, "status", "-"),
            time.perf_counter() - started,
            f" {fields}" if fields else "",
        )

    def _client_gone(self) -> bool:
        """Whether the client closed the connection (it sends nothing more after its request, so a readable
        socket that reads as empty means it left)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _authorized(self) -> bool:
        key = self.server.options.api_key
        if not key:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def _read_json(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError("the request needs a JSON body with a Content-Length header")
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(f"the request body is larger than {MAX_BODY_BYTES} bytes", status=413)
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}") from None

    # --- routes --------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the base class's naming
        started = time.perf_counter()
        path = self.path.split("?", 1)[0].rstrip("/")
        options = self.server.options
        if path == "/health":
            self._send_json(200, {"status": "ok", "model": options.model_id, **self.server.engine.load()})
        elif not self._authorized():
            self._unauthorized()
        elif path == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": options.model_id, "object": "model", "created": self.server.created, "owned_by": "ift"}
                    ],
                },
            )
        else:
            self._send_json(404, protocol.error_body(f"no route GET {path}", code="not_found"))
        self._log(started)

    def do_POST(self) -> None:  # noqa: N802
        started = time.perf_counter()
        path = self.path.split("?", 1)[0].rstrip("/")
        extra: dict[str, Any] = {}
        try:
            if path not in ("/v1/chat/completions", "/v1/completions"):
                raise RequestError(f"no route POST {path}", status=404, code="not_found")
            if not self._authorized():
                self._unauthorized()
            else:
                self._complete(chat=path == "/v1/chat/completions", extra=extra)
        except RequestError as exc:
            self._send_json(exc.status, exc.body())
            extra["error"] = json.dumps(exc.message)
        except QueueFull as exc:
            message = (
                f"the server is busy: {exc.waiting} requests are waiting (ift serve --max-queue); "
                f"retry after {exc.retry_after} s"
            )
            self._send_json(
                503,
                protocol.error_body(message, kind="server_error", code="server_busy"),
                {"Retry-After": str(exc.retry_after)},
            )
            extra["error"] = "queue full"
        except EngineStopped as exc:
            if getattr(self, "status", None) is None:
                self._send_json(503, protocol.error_body(str(exc), kind="server_error", code="shutting_down"))
            extra["error"] = "shutting down"
        except (BrokenPipeError, ConnectionResetError, ClientGone):
            self.status = getattr(self, "status", 499)
            extra["error"] = "client disconnected"
        except Exception as exc:  # a bug: answer 500 and keep the traceback in the log
            LOG.error("%s %s failed:\n%s", self.command, path, traceback.format_exc())
            if getattr(self, "status", None) is None:
                self._send_json(500, protocol.error_body(f"internal error: {type(exc).__name__}", kind="server_error"))
        self._log(started, **extra)

    def _unauthorized(self) -> None:
        self._send_json(
            401,
            protocol.error_body(
                "Incorrect or missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
            ),
        )

    def _complete(self, *, chat: bool, extra: dict[str, Any]) -> None:
        options, served = self.server.options, self.server.served
        body = self._read_json()
        parse = protocol.parse_chat if chat else protocol.parse_completion
        request = parse(
            body,
            served_model=options.model_id,
            default_max_tokens=options.default_max_tokens,
            max_tokens_cap=options.max_tokens_cap,
        )
        prompt = served.chat_prompt(request.messages) if chat else request.prompt
        ids = served.encode(prompt)
        extra["prompt_tokens"] = len(ids)
        if options.log_prompts:
            extra["prompt"] = json.dumps(prompt)
        rid = protocol.new_id("chatcmpl" if chat else "cmpl")
        job = served.new_job(ids, request.sampling, template_stops=chat, logprobs=request.logprobs)
        self.server.engine.submit(job)
        pieces = job.pieces(self._client_gone)
        try:
            if request.stream:
                text, count = self._stream(chat, rid, pieces, len(ids), request)
            else:
                text, count, finish, entries = "", 0, "stop", []
                for piece in pieces:
                    text, count = text + piece.text, piece.completion_tokens
                    finish = piece.finish_reason or finish
                    entries += piece.logprobs
                logprobs = None
                if request.logprobs is not None:
                    logprobs = protocol.chat_logprobs(entries) if chat else protocol.completion_logprobs(entries)
                shape = protocol.chat_response if chat else protocol.completion_response
                self._send_json(200, shape(rid, options.model_id, text, finish, len(ids), count, logprobs))
        finally:
            job.cancel()  # a no-op once the job has finished; frees its batch row when the client went away
        extra["completion_tokens"] = count
        if options.log_prompts:
            extra["completion"] = json.dumps(text)

    def _stream(
        self, chat: bool, rid: str, pieces: Any, prompt_tokens: int, request: protocol.CompletionRequest
    ) -> tuple[str, int]:
        """Server-sent events: one chunk per text delta, a last chunk with ``finish_reason``, ``[DONE]``."""
        model_id = self.server.options.model_id
        first = next(pieces)  # a failure before the first piece still becomes an error status, not a stream
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.status = 200

        def event(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        text, count = "", 0
        if chat:
            event(protocol.stream_chunk(True, rid, model_id, None, None, first=True))
        piece = first
        while True:
            logprobs = None
            if request.logprobs is not None and piece.logprobs:
                logprobs = (
                    protocol.chat_logprobs(piece.logprobs)
                    if chat
                    else protocol.completion_logprobs(piece.logprobs, len(text))
                )
            text, count = text + piece.text, piece.completion_tokens
            if piece.text or logprobs:
                event(protocol.stream_chunk(chat, rid, model_id, piece.text, None, logprobs=logprobs))
            if piece.finish_reason:
                event(protocol.stream_chunk(chat, rid, model_id, None, piece.finish_reason))
                break
            piece = next(pieces)
        if request.include_usage:
            event(protocol.usage_chunk(chat, rid, model_id, prompt_tokens, count))
        event("[DONE]")
        return text, count


class OpenAIServer(ThreadingHTTPServer):
    """A thread per connection, and the engine that runs the model; :meth:`server_close` stops the engine."""

    daemon_threads = True
    request_queue_size = 128  # connections the kernel holds before accept(): more than --max-queue

    def __init__(self, address: tuple[str, int], served: Any, options: ServerOptions) -> None:
        super().__init__(address, OpenAIHandler)
        self.served, self.options, self.created = served, options, int(time.time())
        self.engine = served.engine(max_batch=options.max_batch, max_queue=options.max_queue)

    def server_close(self) -> None:
        super().server_close()
        self.engine.stop()


def make_server(served: Any, options: ServerOptions, host: str = "127.0.0.1", port: int = 8000) -> OpenAIServer:
    """A server bound to ``host:port`` (port 0: any free port; see ``server.server_address``), not yet serving;
    its engine's worker is already waiting for requests."""
    return OpenAIServer((host, port), served, options)
