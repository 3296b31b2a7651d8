"""Token spans of a byte-level BPE tokenizer from the token ids alone, without asking the tokenizer for offsets.

Reading offsets from ``tokenizers`` builds a Python tuple per token; with a byte-level tokenizer (about one token
per byte of text) that was a third of the data path's time. For a tokenizer whose pipeline is known to keep every
byte of the text, in order, each token covers exactly the bytes its vocabulary string stands for (one
byte-level character is one byte), so the spans follow from the ids: the byte lengths of the tokens, summed
along each text, mapped from bytes to characters. The spans are those the tokenizer reports without trimming
(:func:`token_labels.encode_with_offsets`), including a token that covers only some of a character's bytes
(its span is the whole character, as the tokenizer's alignment gives it).

Only pipelines made of these parts are read this way (anything else: :func:`lengths_table` gives None and the
caller asks the tokenizer for offsets):

- no normalizer, or Unicode normalization forms only (NFC, NFD, NFKC, NFKD), used only for a batch whose every
  text the normalizer leaves unchanged;
- pre-tokenizers that split without adding characters (``Split``, ``Digits``, ``Punctuation``) and at least one
  ``ByteLevel`` without ``add_prefix_space``;
- a BPE model without byte fallback and without subword prefix or word suffix;
- added tokens without ``lstrip`` / ``rstrip`` (their span is their content).

Nothing in such a pipeline adds a byte, so a text's tokens tile it exactly when their byte lengths sum to its
byte length; a batch where any text does not (characters a pre-tokenizer removed, a token of unknown length)
is not read this way either (:func:`token_spans` gives None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Normalizers that only recompose or decompose characters: a text they leave unchanged keeps its alignment.
_UNICODE_FORMS = {"NFC", "NFD", "NFKC", "NFKD"}
_SPLITTERS = {"Split", "Digits", "Punctuation"}


@dataclass
class LengthsTable:
    """The byte length of every token id (-1: not known, so a batch containing it is not read from lengths)
    and the normalizer a batch's texts must be left unchanged by (None: no normalizer)."""

    lengths: Any
    normalizer: Any


_TABLES: dict[int, tuple[Any, Any, LengthsTable | None]] = {}


def _fingerprint(backend: Any) -> Any:
    """What the table depends on, cheap to read (microseconds): the vocabulary size, the normalizer and
    pre-tokenizer, the model's kind and options, the added tokens and their stripping. None when a part does not
    serialize (a custom Python component)."""
    try:
        model, normalizer, pre = backend.model, backend.normalizer, backend.pre_tokenizer
        added = backend.get_added_tokens_decoder()
        return (
            backend.get_vocab_size(with_added_tokens=True),
            None if pre is None else pre.__getstate__(),
            None if normalizer is None else normalizer.__getstate__(),
            type(model).__name__,
            tuple(
                getattr(model, k, None) for k in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix")
            ),
            tuple((i, t.content, t.lstrip, t.rstrip) for i, t in sorted(added.items())),
        )
    except Exception:  # noqa: BLE001 - a component that cannot be read: never read spans from lengths
        return None


def lengths_table(backend: Any) -> LengthsTable | None:
    """The :class:`LengthsTable` of a ``tokenizers.Tokenizer`` whose pipeline is one described in the module
    docstring; None for any other. Cached per backend, rebuilt when the pipeline changes (tokens added, another
    pre-tokenizer or normalizer set; see :func:`_fingerprint`)."""
    key = _fingerprint(backend)
    if key is None:
        return None
    cached = _TABLES.get(id(backend))
    if cached is not None and cached[0] is backend and cached[1] == key:
        return cached[2]
    try:
        table = _build(json.loads(backend.to_str()), backend)
    except Exception:  # a pipeline that does not serialize (custom Python parts) or an unexpected layout
        table = None
    _TABLES[id(backend)] = (backend, key, table)
    return table


def _pre_tokenizers_ok(config: Any) -> tuple[bool, bool]:
    """(every part only splits or maps to bytes, some part is ``ByteLevel`` without a prefix space)."""
    kind = config.get("type") if isinstance(config, dict) else None
    if kind == "Sequence":
        parts = [_pre_tokenizers_ok(p) for p in config.get("pretokenizers", [])]
        return all(ok for ok, _ in parts), any(byte for _, byte in parts)
    if kind == "ByteLevel":
        return not config.get("add_prefix_space", False), True
    return kind in _SPLITTERS, False


def _normalizer_ok(config: Any) -> bool:
    if config is None:
        return True
    if config.get("type") == "Sequence":
        return all(_normalizer_ok(n) for n in config.get("normalizers", []))
    return config.get("type") in _UNICODE_FORMS


def _build(config: dict[str, Any], backend: Any) -> LengthsTable | None:
    import numpy as np
    from tokenizers import pre_tokenizers

    model = config.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix"):
        return None
    if model.get("end_of_word_suffix") or not _normalizer_ok(config.get("normalizer")):
        return None
    ok, byte_level = _pre_tokenizers_ok(config.get("pre_tokenizer"))
    if not (ok and byte_level):
        return None
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    size = backend.get_vocab_size(with_added_tokens=True)
    lengths = np.full(size, -1, dtype=np.int64)
    for token, index in model.get("vocab", {}).items():
        if 0 <= index < size and token and all(ch in alphabet for ch in token):
            lengths[index] = len(token)  # one byte-level character stands for one byte
    for added in config.get("added_tokens") or []:
        index, content = added.get("id"), added.get("content")
        if not isinstance(index, int) or not 0 <= index < size:
            continue
        if added.get("lstrip") or added.get("rstrip") or not isinstance(content, str) or not content:
            lengths[index] = -1  # its span takes in the whitespace around it, or is not known
            continue
        own = len(content.encode("utf-8"))
        # matched in the text it spans its content; produced by the model (its vocabulary string is made of
        # byte-level characters) it spans that string's bytes: both must agree
        lengths[index] = own if lengths[index] in (-1, own) else -1
    normalizer = backend.normalizer if config.get("normalizer") is not None else None
    return LengthsTable(lengths, normalizer)


def token_spans(table: LengthsTable, texts: list[str], ids: Any, counts: Any) -> tuple[Any, Any] | None:
    """Each token's character span in its own text, as two int64 arrays (starts, ends), for the tokens ``ids``
    (flat int64, text after text; ``counts[i]`` tokens of ``texts[i]``); None when this batch cannot be read from
    byte lengths (see the module docstring)."""
    import numpy as np

    if table.normalizer is not None and any(table.normalizer.normalize_str(t) != t for t in texts):
        return None
    lengths = table.lengths
    if len(ids) and (int(ids.max()) >= len(lengths) or int(ids.min()) < 0):
        return None
    sizes = lengths[ids]
    if len(sizes) and int(sizes.min()) < 0:
        return None
    data = np.frombuffer("".join(texts).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    chars = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    char_base = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(chars, out=char_base[1:])
    if len(data) == int(char_base[-1]):  # every character one byte
        char_of_byte = None
        byte_base = char_base
    else:
        starts = (data & 0xC0) != 0x80  # the first byte of each character
        char_of_byte = np.cumsum(starts) - 1
        first_bytes = np.append(np.flatnonzero(starts), len(data))
        byte_base = first_bytes[char_base]
    owner = np.repeat(np.arange(len(texts)), counts)
    covered = np.bincount(owner, weights=sizes, minlength=len(texts))
    if not np.array_equal(covered.astype(np.int64), np.diff(byte_base)):
        return None  # some text's tokens do not tile its bytes
    end_byte = np.cumsum(sizes)  # tokens tile the texts' bytes end to end
    start_byte = end_byte - sizes
    if char_of_byte is None:
        first, last = start_byte, end_byte
    else:
        first, last = char_of_byte[start_byte], char_of_byte[end_byte - 1] + 1
    base = char_base[owner]
    return first - base, last - base
