"""Labels from character offsets: which tokens of a rendered text the model is trained to produce.

The renderer marks characters as trainable (assistant content and its end-of-turn text); the tokenizer gives each
token its character span. :func:`labels_from_offsets` is the one place that turns the two into labels, so every
caller (one example at a time, or a batched tokenization path) applies the same policy:

- a token is trained when it **begins** on a trainable character;
- a token that begins before the trainable text and reaches into it (``[/INST]Ġ`` + answer, a header merged with
  the answer's first letters) is **not** trained: it "straddles" the boundary and is reported, so a user sees
  that the first characters of some answers are learned only as part of the prompt;
- a token with an empty span (a whitespace token whose offsets a tokenizer trimmed) is trained when the
  characters on both sides of it are trainable.

Offsets must be the exact spans of the text (:func:`encode_with_offsets` gives them even for tokenizers whose
post-processor trims offsets, ``ByteLevel(trim_offsets=True)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE = -100


@dataclass
class TokenLabels:
    """Labels (``IGNORE`` where no loss is taken) and the indices of tokens that straddle a trainable boundary."""

    labels: list[int]
    straddling: list[int] = field(default_factory=list)


def trainable_mask(segments: Sequence[Any]) -> tuple[str, bytearray]:
    """The full text of ``segments`` (objects with ``text`` and ``trainable``) and one byte per character, 1 where
    the character is trainable."""
    text = "".join(s.text for s in segments)
    mask = bytearray(len(text))
    pos = 0
    for seg in segments:
        if seg.trainable:
            mask[pos : pos + len(seg.text)] = b"\x01" * len(seg.text)
        pos += len(seg.text)
    return text, mask


def labels_from_offsets(
    ids: Sequence[int], offsets: Sequence[tuple[int, int]], trainable: bytes | bytearray
) -> TokenLabels:
    """Labels of the tokens ``ids`` whose character spans are ``offsets``, given the trainable characters of the
    text (``trainable[i]`` non-zero: character ``i`` is trained). See the module docstring for the policy.
    Vectorised with numpy over a prefix sum of trainable characters (a per-token Python loop was the largest cost
    of preparing data)."""
    import numpy as np

    count = len(ids)
    if count == 0:
        return TokenLabels([])
    n = len(trainable)
    if n == 0:
        return TokenLabels([IGNORE] * count)
    mask = np.frombuffer(bytes(trainable), dtype=np.uint8) != 0
    cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(mask, out=cum[1:])
    spans = np.asarray(offsets, dtype=np.int64).reshape(count, 2)
    start, end = np.clip(spans[:, 0], 0, n), np.clip(spans[:, 1], 0, n)
    nonempty = spans[:, 1] > spans[:, 0]
    inside = start < n
    begins = nonempty & inside & mask[np.minimum(start, n - 1)]
    reaches = (cum[end] - cum[start]) > 0
    straddle = nonempty & ~begins & reaches
    has_before, has_after = start > 0, inside
    before = mask[np.maximum(start - 1, 0)]
    after = mask[np.minimum(start, n - 1)]
    empty_ok = ~nonempty & (has_before | has_after) & (~has_before | before) & (~has_after | after)
    labels = np.where(begins | empty_ok, np.asarray(ids, dtype=np.int64), IGNORE)
    return TokenLabels(labels.tolist(), np.flatnonzero(straddle).tolist())


_UNTRIMMED: dict[int, tuple[Any, Any]] = {}


def _untrimmed(backend: Any) -> Any:
    """For a backend tokenizer whose post-processor trims offsets, a copy that leaves them untouched (ids are the
    same: without special tokens a post-processor only adjusts offsets); None for any other. Cached per backend."""
    cached = _UNTRIMMED.get(id(backend))
    if cached is not None and cached[0] is backend:
        return cached[1]
    config = json.loads(backend.to_str())
    copy = None
    if '"trim_offsets": true' in json.dumps(config.get("post_processor")):
        from tokenizers import Tokenizer, processors

        copy = Tokenizer.from_str(backend.to_str())
        copy.post_processor = processors.ByteLevel(trim_offsets=False)
        copy.no_truncation()
        copy.no_padding()
    _UNTRIMMED[id(backend)] = (backend, copy)
    return copy


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` without special tokens added (what ``apply_chat_template(tokenize=True)`` gives for a
    rendered chat) and the exact character span of each token."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    untrimmed = _untrimmed(backend) if backend is not None else None
    if untrimmed is not None:
        enc = untrimmed.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]  # type: ignore[misc]
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]


def encode_batch_with_offsets(tokenizer: Any, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """:func:`encode_with_offsets` for many texts in one batched call of the fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    untrimmed = _untrimmed(backend) if backend is not None else None
    if untrimmed is not None:
        return [
            (list(e.ids), [tuple(o) for o in e.offsets])  # type: ignore[misc]
            for e in untrimmed.encode_batch(list(texts), add_special_tokens=False)
        ]
    out = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [
        (list(ids), [tuple(o) for o in offs]) for ids, offs in zip(out["input_ids"], out["offset_mapping"], strict=True)
    ]
