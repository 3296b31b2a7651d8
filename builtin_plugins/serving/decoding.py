"""One request's side of decoding: which token is picked (greedy, or temperature / top-p sampling with the
request's own seed), when it stops (EOS, a one-token stop string, a stop text, its own ``max_tokens``), and
the text deltas and token log-probabilities it sends. The batch loop in :mod:`.engine` feeds each row's
logits to its :class:`RowDecoder`; nothing here knows about the other rows of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .protocol import Sampling


@dataclass
class TokenLogprob:
    """One generated token: its text, its log-probability under the model, and the most likely alternatives
    (``top``, most likely first) when the request asked for them."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Piece:
    """Text produced since the previous piece; ``finish_reason`` is set on the last one. ``logprobs`` holds the
    tokens whose text this piece completes (empty unless the request asked for log-probabilities)."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


class RowDecoder:
    """Decoding state of one request inside a batch.

    ``stop_ids`` end the answer without showing the token (EOS, ``<|im_end|>`` as one special token);
    ``stops`` are texts the answer is cut before; ``budget`` is the request's ``max_tokens`` fitted to the
    model's context. ``logprobs`` is ``None`` (not asked) or how many alternatives to report per token.
    """

    def __init__(
        self,
        tokenizer: Any,
        sampling: Sampling,
        *,
        stop_ids: set[int],
        stops: list[str],
        budget: int,
        logprobs: int | None,
        generator: Any,
    ) -> None:
        self.tokenizer, self.sampling, self.generator = tokenizer, sampling, generator
        self.stop_ids, self.stops, self.budget, self.logprobs = stop_ids, stops, budget, logprobs
        self.hold = max((len(s) for s in stops), default=1) - 1  # a stop text may still be forming
        self.produced: list[int] = []
        self.entries: list[TokenLogprob] = []
        self.ends: list[int] = []  # the text length once each produced token is decoded
        self.sent = 0  # characters of text already sent
        self.sent_entries = 0
        self.done = False

    def pick(self, logits: Any) -> int:
        """The next token from this row's float32 logits, by the request's own sampling settings."""
        import torch

        sampling = self.sampling
        if sampling.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1:
            ordered, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(ordered, dim=-1) - ordered < sampling.top_p  # always keeps the most likely token
            probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _entry(self, logits: Any, token: int) -> TokenLogprob:
        """The model's own log-probabilities (before temperature / top-p), as the OpenAI API reports them."""
        import torch

        logprobs = torch.log_softmax(logits, dim=-1)
        top: list[tuple[str, float]] = []
        if self.logprobs:
            values, ids = torch.topk(logprobs, min(self.logprobs, logprobs.shape[-1]))
            top = [(self._text(int(i)), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)]
        return TokenLogprob(self._text(token), float(logprobs[token]), top)

    def _text(self, token: int) -> str:
        return str(self.tokenizer.decode([token], skip_special_tokens=False))

    def step(self, logits: Any) -> tuple[int, Piece | None]:
        """Pick this row's next token from ``logits``; return it and the piece to send now (or ``None``)."""
        token = self.pick(logits)
        counted = len(self.produced) + 1  # the stop token is generated too, but never shown
        finish: str | None
        if token in self.stop_ids:
            finish = "stop"
        else:
            self.produced.append(token)
            if self.logprobs is not None:
                self.entries.append(self._entry(logits, token))
            finish = "length" if len(self.produced) >= self.budget else None
        text = str(self.tokenizer.decode(self.produced, skip_special_tokens=True))
        if len(self.ends) < len(self.produced):
            self.ends.append(len(text))
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        if finish is not None:
            self.done = True
            # the tokens whose text is (at least partly) shown; those after a cut stop text are not
            starts = [0, *self.ends][: len(self.ends)]
            shown = sum(
                1 for start, end in zip(starts, self.ends, strict=True) if start < len(text) or end <= len(text)
            )
            return token, Piece(text[self.sent :], counted, finish, self._entries_until(shown))
        # part of a multi-byte character decodes as U+FFFD until the rest arrives: wait for it
        ready = min(len(text) - self.hold, len(text.rstrip("\ufffd")))
        if ready > self.sent:
            piece = Piece(
                text[self.sent : ready], counted, None, self._entries_until(sum(1 for end in self.ends if end <= ready))
            )
            self.sent = ready
            return token, piece
        return token, None

    def _entries_until(self, count: int) -> list[TokenLogprob]:
        if self.logprobs is None or count <= self.sent_entries:
            return []
        out = self.entries[self.sent_entries : count]
        self.sent_entries = count
        return out
