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

import gc
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from ift.builtin_plugins import byte_spans

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


#: The methods of ``transformers``' fast tokenizer whose behaviour :func:`direct_backend` reproduces; a tokenizer
#: class (or instance) that overrides any of them is tokenized through ``tokenizer(...)``.
_MIRRORED = (
    "__call__",
    "_encode_plus",
    "_get_padding_truncation_strategies",
    "set_truncation_and_padding",
    "_convert_encoding",
)


def direct_backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` to call directly for ``tokenizer(texts, add_special_tokens=False,
    return_offsets_mapping=True)``, or None when that call is not understood here (a slow tokenizer, a class that
    changes any step of the call, a tokenizer with an input/target mode, another ``transformers`` without these
    internals): the caller then goes through ``tokenizer(...)``.

    For a plain fast tokenizer of ``transformers`` 5 that call does exactly this: no padding and no truncation on
    the backend, its ``encode_special_tokens`` set to the tokenizer's ``split_special_tokens``, then the backend's
    ``encode_batch(texts, add_special_tokens=False)``, whose ``ids`` and ``offsets`` are the result (the rest of the
    call builds attention masks and type ids, which are not used here). :func:`_direct_encode` does the same and puts
    the backend's settings back afterwards."""
    try:
        from tokenizers import Tokenizer
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(tokenizer)
    if not isinstance(tokenizer, TokenizersBackend):
        return None
    for name in _MIRRORED:
        mine = getattr(cls, name, None)
        reference = getattr(TokenizersBackend, name, None)
        if reference is None or mine is not reference or name in vars(tokenizer):
            return None
    if PreTrainedTokenizerBase.__call__ is not TokenizersBackend.__call__:  # pragma: no cover - another version
        return None
    if hasattr(tokenizer, "_switch_to_input_mode") or getattr(tokenizer, "_in_target_context_manager", False):
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    if not isinstance(backend, Tokenizer) or getattr(tokenizer, "backend_tokenizer", None) is not backend:
        return None
    if not isinstance(getattr(tokenizer, "split_special_tokens", None), bool):
        return None
    return backend


def _direct_encode(
    tokenizer: Any, backend: Any, texts: list[str], *, copy: Any = None, offsets: bool = True
) -> list[Any]:
    """``encode_batch(texts, add_special_tokens=False)`` on ``copy`` (an untrimmed copy of ``backend``) or on
    ``backend``, set up as ``tokenizer(texts, add_special_tokens=False)`` sets it up (see :func:`direct_backend`);
    the backend's truncation, padding and ``encode_special_tokens`` are restored afterwards. With ``offsets``
    false, ``encode_batch_fast`` where the backend has it: the same ids, no offsets computed."""
    target = copy if copy is not None else backend
    truncation, padding = target.truncation, target.padding
    split = target.encode_special_tokens
    try:
        if truncation is not None:
            target.no_truncation()
        if padding is not None:
            target.no_padding()
        target.encode_special_tokens = tokenizer.split_special_tokens
        encode = target.encode_batch if offsets else getattr(target, "encode_batch_fast", target.encode_batch)
        encodings = encode(texts, add_special_tokens=False)
    finally:
        target.encode_special_tokens = split
        if truncation is not None:
            target.enable_truncation(**truncation)
        if padding is not None:
            target.enable_padding(**padding)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and any(len(e) > limit for e in encodings):  # the call's one-time warning
        warn = getattr(tokenizer, "_eventual_warn_about_too_long_sequence", None)
        if warn is not None:
            warn(next(e.ids for e in encodings if len(e) > limit), None, True)
    return encodings


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` without special tokens added (what ``apply_chat_template(tokenize=True)`` gives for a
    rendered chat) and the exact character span of each token."""
    encodings = _encodings(tokenizer, [text])
    if encodings is not None:
        return list(encodings[0].ids), [tuple(o) for o in encodings[0].offsets]  # type: ignore[misc]
    out = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]


def _encodings(tokenizer: Any, texts: list[str]) -> list[Any] | None:
    """The backend's encodings of ``texts`` as ``tokenizer(texts, add_special_tokens=False)`` makes them, with
    untrimmed offsets; None when the tokenizer must be called instead (see :func:`direct_backend`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    untrimmed = _untrimmed(backend) if backend is not None else None
    direct = direct_backend(tokenizer)
    if direct is not None:
        return _direct_encode(tokenizer, direct, texts, copy=untrimmed)
    if untrimmed is not None:
        # a fast tokenizer of a kind not mirrored here, whose offsets are trimmed: the untrimmed copy, with the
        # tokenizer's own split_special_tokens (a copy does not carry the backend's runtime setting)
        split = untrimmed.encode_special_tokens
        untrimmed.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        try:
            return list(untrimmed.encode_batch(texts, add_special_tokens=False))
        finally:
            untrimmed.encode_special_tokens = split
    return None


def encode_batch_with_offsets(tokenizer: Any, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """:func:`encode_with_offsets` for many texts in one batched call of the fast tokenizer."""
    texts = list(texts)
    encodings = _encodings(tokenizer, texts)
    if encodings is not None:
        return [(list(e.ids), [tuple(o) for o in e.offsets]) for e in encodings]  # type: ignore[misc]
    return _called(tokenizer, texts)


def _called(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """The reference path: the tokenizer itself."""
    out = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [
        (list(ids), [tuple(o) for o in offs]) for ids, offs in zip(out["input_ids"], out["offset_mapping"], strict=True)
    ]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (on again afterwards, also on an exception, when it was on):
    converting a batch's offsets allocates a tuple per token, and every 700 allocations would start a collection
    that finds nothing (a quarter of the conversion's time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class BatchLabels:
    """Token ids and labels of many texts, end to end: text ``i`` is ``ids[bounds[i]:bounds[i + 1]]`` (numpy int64
    arrays), with ``straddling[i]`` tokens of it straddling a trainable boundary."""

    ids: Any
    labels: Any
    bounds: Any
    straddling: Any

    def example(self, i: int) -> tuple[list[int], list[int], int]:
        a, b = int(self.bounds[i]), int(self.bounds[i + 1])
        return self.ids[a:b].tolist(), self.labels[a:b].tolist(), int(self.straddling[i])


def _flat_ids(id_lists: list[Any]) -> tuple[Any, Any]:
    """The token ids of many texts end to end (int64) and each text's token count."""
    import numpy as np

    counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    return np.fromiter(chain.from_iterable(id_lists), dtype=np.int64, count=int(counts.sum())), counts


def _ids_and_offsets(tokenizer: Any, texts: list[str]) -> tuple[Any, Any, Any, Any]:
    """Flat ids, token counts, and each token's span (starts, ends) in its own text, from the tokenizer's
    offsets (:func:`encode_batch_with_offsets`)."""
    import numpy as np

    with _collector_paused():  # a (start, end) tuple per token: hundreds of thousands, none of them in a cycle
        encodings = _encodings(tokenizer, texts)
        if encodings is not None:
            id_lists = [e.ids for e in encodings]
            span_lists = [e.offsets for e in encodings]
        else:
            pairs = _called(tokenizer, texts)
            id_lists = [ids for ids, _ in pairs]
            span_lists = [offs for _, offs in pairs]
        ids, counts = _flat_ids(id_lists)
        spans = np.fromiter(chain.from_iterable(chain.from_iterable(span_lists)), dtype=np.int64, count=2 * len(ids))
        del encodings, id_lists, span_lists
    return ids, counts, spans[0::2], spans[1::2]


def batch_labels(tokenizer: Any, texts: Sequence[str], trainable: Sequence[bytes | bytearray]) -> BatchLabels:
    """Tokenize ``texts`` (as :func:`encode_batch_with_offsets`) and label every token of every text at once, by
    the policy of :func:`labels_from_offsets` (which gives exactly the same labels one text at a time): the ids
    and spans of the whole batch go into flat numpy arrays, with each text's characters placed end to end. For a
    byte-level BPE tokenizer the spans are read from the ids (:mod:`byte_spans`) instead of the tokenizer's
    offsets, which cost a Python tuple per token."""
    import numpy as np

    texts = list(texts)
    direct = direct_backend(tokenizer)
    table = byte_spans.lengths_table(direct) if direct is not None else None
    read = None
    if table is not None:  # ids only; the spans follow from them (byte_spans)
        ids, counts = _flat_ids([e.ids for e in _direct_encode(tokenizer, direct, texts, offsets=False)])
        read = byte_spans.token_spans(table, texts, ids, counts)
    if read is not None:
        first, last = read
    else:
        ids, counts, first, last = _ids_and_offsets(tokenizer, texts)
    bounds = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    sizes = np.fromiter(map(len, trainable), dtype=np.int64, count=len(texts))
    base = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(sizes, out=base[1:])
    owner = np.repeat(np.arange(len(texts)), counts)  # each token's text
    n, origin = sizes[owner], base[owner]
    # every text's characters end to end, then one more (index -1 and the end of an empty text land on it)
    mask = np.frombuffer(b"".join(trainable) + b"\x00", dtype=np.uint8) != 0
    cum = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask, out=cum[1:])
    start = np.minimum(np.maximum(first, 0), n)
    end = np.minimum(np.maximum(last, 0), n)
    nonempty = last > first
    has_before, has_after = start > 0, start < n  # has_after: the token begins inside the text (so n > 0)
    at = mask[origin + np.minimum(start, n - 1)]  # the character a token begins on (when n > 0)
    begins = nonempty & has_after & at
    straddle = nonempty & ~begins & (cum[origin + end] != cum[origin + start])
    before = mask[origin + start - 1]  # read only where has_before
    empty_ok = ~nonempty & (has_before | has_after) & (~has_before | before) & (~has_after | at)
    labels = np.where((begins | empty_ok) & (n > 0), ids, IGNORE)
    straddling = np.bincount(owner[straddle], minlength=len(texts))
    return BatchLabels(ids, labels, bounds, straddling)
