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
            mask[pos:pos + len(seg.text)] = b"\x01" * len(seg.text)
        pos += len(seg.text)
    return text, mask


def labels_from_offsets(ids: Sequence[int], offsets: Sequence[tuple[int, int]],
                        trainable: bytes | bytearray) -> TokenLabels:
    """Labels of the tokens ``ids`` whose character spans are ``offsets``, given the trainable characters of the
    text (``trainable[i]`` non-zero: character ``i`` is trained). See the module docstring for the policy."""
    n = len(trainable)
    labels: list[int] = []
    straddling: list[int] = []
    for index, (tid, (start, end)) in enumerate(zip(ids, offsets, strict=True)):
        if end > start:
            if start < n and trainable[start]:
                labels.append(tid)
                continue
            if any(trainable[start:end]):
                straddling.append(index)
            labels.append(IGNORE)
            continue
        before = trainable[start - 1] if 0 < start <= n else None
        after = trainable[start] if start < n else None
        sides = [s for s in (before, after) if s is not None]
        labels.append(tid if sides and all(sides) else IGNORE)
    return TokenLabels(labels, straddling)


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
