"""Where each message's content lands in a chat template's output, found by rendering with markers.

Each message's content is wrapped in a pair of private-use characters of its own (plane 15, one pair per message
index) and the conversation rendered once; removing the markers must give exactly the unmarked rendering, and the
markers' positions are then the content spans. Nothing is found by searching the text, so an answer that also
occurs in the question, or equals a role word, is located exactly. A template that trims content (``| trim``)
renders markers placed around the stripped content instead; one that changes the content otherwise (drops it,
cuts it at a ``</think>``) cannot be marked, and the record is refused with that reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MARK_BASE = 0xF0000
MARK_LIMIT = 0xFFFFD
_MARK_RE = re.compile("[\U000f0000-\U000ffffd]")

Apply = Callable[[list[dict[str, Any]], bool], str]


class SpanError(ValueError):
    """The template's output cannot be matched to the messages (the reason is in the message)."""


def contains_marks(text: str) -> bool:
    """Whether ``text`` holds characters reserved for the markers (Unicode plane 15)."""
    return _MARK_RE.search(text) is not None


def _marks(index: int) -> tuple[str, str]:
    return chr(MARK_BASE + 2 * index), chr(MARK_BASE + 2 * index + 1)


def _marked(messages: Sequence[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    out = []
    for j, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, str) or (style == "skip-empty" and not content):
            out.append(dict(message))
            continue
        opening, closing = _marks(j)
        if style == "inside":
            core = content.strip()
            lead = content[: len(content) - len(content.lstrip())]
            trail = content[len(lead) + len(core) :]
            text = lead + opening + core + closing + trail
        else:
            text = opening + content + closing
        out.append({**message, "content": text})
    return out


def _parse(marked: str, count: int) -> tuple[str, dict[int, tuple[int, int]]]:
    plain: list[str] = []
    length = 0
    starts: dict[int, int] = {}
    spans: dict[int, tuple[int, int]] = {}
    repeated: set[int] = set()
    for piece in re.split(f"({_MARK_RE.pattern})", marked):
        if not piece:
            continue
        if len(piece) == 1 and _MARK_RE.match(piece):
            code = ord(piece) - MARK_BASE
            index, closing = divmod(code, 2)
            if index >= count:
                continue
            if not closing:
                if index in starts or index in spans:
                    repeated.add(index)
                starts[index] = length
            elif index in starts:
                spans.setdefault(index, (starts[index], length))
            continue
        plain.append(piece)
        length += len(piece)
    for index in repeated:
        spans.pop(index, None)
        spans[-1 - index] = (0, 0)  # rendered more than once: no single span (recorded for the error message)
    return "".join(plain), spans


@dataclass
class Rendered:
    """The plain rendering and each message's content span in it (message index -> (start, end)); a negative key
    ``-1 - j`` means message ``j`` was rendered more than once."""

    text: str
    spans: dict[int, tuple[int, int]]
    style: str


def render_marked(
    apply: Apply, messages: Sequence[dict[str, Any]], *, real: str | None = None, style: str | None = None
) -> Rendered:
    """Render ``messages`` with markers and check the result against the unmarked rendering ``real``."""
    messages = list(messages)
    real = apply(messages, False) if real is None else real
    styles = [style] if style else ["around", "inside", "skip-empty"]
    first: str | None = None
    for candidate in styles:
        marked = apply(_marked(messages, candidate), False)
        plain, spans = _parse(marked, len(messages))
        if plain == real:
            return Rendered(plain, spans, candidate)
        first = plain if first is None else first
    assert first is not None
    at = next((i for i, (a, b) in enumerate(zip(first, real, strict=False)) if a != b), min(len(first), len(real)))
    raise SpanError(
        "the chat template does not render message content verbatim (it changes it as it renders), "
        f"so the trained text cannot be located: at character {at} the template writes "
        f"{real[max(0, at - 30) : at + 30]!r} for the content placed as {first[max(0, at - 30) : at + 30]!r}"
    )


def first_difference(a: str, b: str) -> int:
    """Index of the first character where ``a`` and ``b`` differ (the shorter length when one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def without_whitespace(text: str) -> str:
    return re.sub(r"\s+", "", text)
