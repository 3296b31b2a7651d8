"""The direct backend call that batched encoding uses (token_labels._direct) gives what ``tokenizer(texts,
add_special_tokens=False, return_offsets_mapping=True)`` gives: the same ids, and exact character spans (the
tokenizer's own offsets where it does not trim them)."""

from __future__ import annotations

from typing import Any

import pytest
from test_chat_template_corpus import STYLES
from test_chat_template_corpus import tokenizer as corpus_tokenizer  # same folder (rootdir-less test modules)

from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer
from ift.builtin_plugins.token_labels import _direct, encode_batch_with_offsets, encode_with_offsets

TEXTS = ["### Question: what is 2 + 2?\n### Answer:  four</s>", "  leading spaces\tand\ttabs  ",
         "<s>begins with a special token, ends with one</s>", "é ü 中文 émoji 🙂 mixed", "", "x",
         "a</s>b</s></s>c"]


def expected(tok: Any, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    out = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    return [(list(ids), [tuple(o) for o in offs]) for ids, offs in zip(out["input_ids"], out["offset_mapping"],
                                                                        strict=True)]


def covers(text: str, offsets: Any) -> bool:
    """Exact spans: every character of the text is in a token's span, spans in order (no trimmed gaps)."""
    spans = [(int(o[0]), int(o[1])) for o in offsets]
    covered = [False] * len(text)
    for start, end in spans:
        covered[start:end] = [True] * (end - start)
    return all(covered) and [s for s, _ in spans] == sorted(s for s, _ in spans)


@pytest.mark.parametrize("style", STYLES)
def test_direct_ids_and_spans_equal_the_tokenizer_call(style: str) -> None:
    tok = corpus_tokenizer(style, "alpaca")
    want = expected(tok, TEXTS)
    got = encode_batch_with_offsets(tok, TEXTS)
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for text, (_, offsets), (_, reference) in zip(TEXTS, got, want, strict=True):
        assert offsets.shape == (len(reference), 2)
        if "trim" not in style:
            assert [tuple(int(x) for x in o) for o in offsets] == reference
        assert covers(text, offsets)
    if "trim" in style:  # the tokenizer's own offsets leave the spaces out; the direct ones do not
        assert not all(covers(text, reference) for text, (_, reference) in zip(TEXTS, want, strict=True))
    one = [encode_with_offsets(tok, text) for text in TEXTS]
    assert [ids for ids, _ in one] == [ids for ids, _ in got]
    assert all((a == b).all() for (_, a), (_, b) in zip(one, got, strict=True))


def test_special_tokens_in_the_text_follow_split_special_tokens() -> None:
    tok = corpus_tokenizer("bytelevel", "alpaca")
    eos = tok.convert_tokens_to_ids("</s>")
    assert eos in encode_with_offsets(tok, "a</s>")[0]
    tok.split_special_tokens = True
    ids, _ = encode_with_offsets(tok, "a</s>")
    assert eos not in ids
    assert ids == expected(tok, ["a</s>"])[0][0]


def test_truncation_set_on_the_tokenizer_is_not_applied() -> None:
    tok = build_byte_tokenizer()
    tok("a" * 50, truncation=True, max_length=5)  # leaves truncation configured on the shared backend
    ids, offsets = encode_batch_with_offsets(tok, ["b" * 40])[0]
    assert len(ids) == 40 and offsets[-1].tolist() == [39, 40]
    assert _direct(tok) is _direct(tok)  # one backend copy per tokenizer
