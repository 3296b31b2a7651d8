"""Token spans read from byte lengths (``ift.builtin_plugins.byte_spans``) are exactly the tokenizer's own untrimmed
offsets, for every byte-level pipeline that is read this way; every other pipeline, and every batch that cannot be
read this way, goes through the tokenizer's offsets, with the same labels."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from test_chat_template_corpus import STYLES  # same folder (rootdir-less modules)
from test_chat_template_corpus import tokenizer as corpus_tokenizer
from test_direct_tokenize import assert_same, reference

from ift.builtin_plugins import byte_spans, token_labels
from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

POOL = "ab xyz\n\t  éàü中文字😀👍🏽.!?<|im_start|><|im_end|><|endoftext|>"
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def texts(seed: int, count: int = 24, *, pool: str = POOL) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 80))) for _ in range(count)]


def variant(base: Any, *, normalizer: Any = None, pre_tokenizer: Any = None) -> Any:
    """``base`` (a transformers fast tokenizer) with another normalizer or pre-tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(base.backend_tokenizer.to_str())
    if normalizer is not None:
        backend.normalizer = normalizer
    if pre_tokenizer is not None:
        backend.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def split_then_bytes() -> Any:
    """The Llama-3 / Qwen2 arrangement: a regex split, then byte-level without its own regex."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def readable() -> dict[str, Any]:
    from tokenizers import normalizers

    out = {"byte-level": build_byte_tokenizer()}
    out.update({style: corpus_tokenizer(style, "chatml") for style in STYLES if not style.startswith("metaspace")})
    out["split+bytelevel"] = variant(out["bytelevel"], pre_tokenizer=split_then_bytes())
    out["nfc+split+bytelevel"] = variant(
        out["bytelevel"], normalizer=normalizers.NFC(), pre_tokenizer=split_then_bytes()
    )
    return out


def spans_of(tokenizer: Any, batch: list[str]) -> tuple[Any, Any] | None:
    ref = reference(tokenizer, batch)
    ids = np.array([i for r in ref for i in r[0]], dtype=np.int64)
    counts = np.array([len(r[0]) for r in ref], dtype=np.int64)
    table = byte_spans.lengths_table(tokenizer.backend_tokenizer)
    assert table is not None
    return byte_spans.token_spans(table, batch, ids, counts)


@pytest.mark.parametrize("name", list(readable()))
def test_spans_from_byte_lengths_are_the_tokenizers_untrimmed_offsets(name: str) -> None:
    tokenizer = readable()[name]
    pool = POOL.replace("\u0301", "")  # NFC leaves these texts as they are
    for seed in range(30):
        batch = texts(seed, pool=pool)
        got = spans_of(tokenizer, batch)
        assert got is not None, seed
        want = np.array([o for _, offs in reference(tokenizer, batch) for o in offs], dtype=np.int64).reshape(-1, 2)
        assert got[0].tolist() == want[:, 0].tolist() and got[1].tolist() == want[:, 1].tolist(), seed
        assert_same(tokenizer, batch)


def test_a_token_inside_a_character_spans_the_whole_character() -> None:
    tok = build_byte_tokenizer()  # one token per byte: "é" is two tokens, "😀" four
    got = spans_of(tok, ["aé😀"])
    assert got is not None
    assert list(zip(got[0].tolist(), got[1].tolist(), strict=True)) == [(0, 1), (1, 2), (1, 2)] + [(2, 3)] * 4


def pipelines_not_read() -> dict[str, Any]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = corpus_tokenizer("bytelevel", "chatml")
    out = {
        "metaspace": corpus_tokenizer("metaspace-bos", "chatml"),
        "prefix space": variant(base, pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=True)),
        "lowercase": variant(base, normalizer=normalizers.Lowercase()),
        "whitespace split": variant(base, pre_tokenizer=pre_tokenizers.Whitespace()),
    }
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    out["wordpiece"] = PreTrainedTokenizerFast(tokenizer_object=wordpiece)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for option in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"):
        value: Any = True if option == "byte_fallback" else "##"
        bpe = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[], **{option: value}))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        out[option] = PreTrainedTokenizerFast(tokenizer_object=bpe)
    return out


@pytest.mark.parametrize("name", list(pipelines_not_read()))
def test_other_pipelines_are_not_read_from_lengths_and_label_as_before(name: str) -> None:
    tokenizer = pipelines_not_read()[name]
    assert byte_spans.lengths_table(tokenizer.backend_tokenizer) is None
    assert_same(tokenizer, texts(1, 8))


def test_a_batch_whose_tokens_do_not_tile_its_text_goes_through_the_offsets() -> None:
    from tokenizers import pre_tokenizers

    base = corpus_tokenizer("bytelevel", "chatml")
    removing = variant(
        base,
        pre_tokenizer=pre_tokenizers.Sequence(
            [pre_tokenizers.Split(" ", behavior="removed"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        ),
    )
    assert byte_spans.lengths_table(removing.backend_tokenizer) is not None
    assert spans_of(removing, ["a b", "ab"]) is None  # the space is in no token
    assert spans_of(removing, ["ab", "cd"]) is not None
    assert_same(removing, ["a b  c", "ab", "", " x "])


def test_text_a_normalizer_changes_goes_through_the_offsets() -> None:
    from tokenizers import normalizers

    tok = variant(corpus_tokenizer("bytelevel", "chatml"), normalizer=normalizers.NFC())
    assert spans_of(tok, ["cafe\u0301", "x"]) is None  # NFC composes e + accent
    assert spans_of(tok, ["café", "x"]) is not None
    assert_same(tok, ["cafe\u0301 au lait", "café"], [bytearray(b"\x01" * 16), bytearray(b"\x00\x01\x01\x00\x01")])


def test_an_added_token_that_strips_whitespace_goes_through_the_offsets() -> None:
    from tokenizers import AddedToken

    tok = variant(corpus_tokenizer("bytelevel", "chatml"))
    tok.add_tokens([AddedToken("<sep>", lstrip=True, rstrip=True)])
    sep = tok.convert_tokens_to_ids("<sep>")
    table = byte_spans.lengths_table(tok.backend_tokenizer)
    assert table is not None and table.lengths[sep] == -1
    batch = ["left  <sep>  right", "no token here"]
    assert spans_of(tok, batch) is None
    assert_same(tok, batch)
    assert spans_of(tok, batch[1:]) is not None


def test_tokens_added_after_a_first_batch_get_their_lengths() -> None:
    tok = variant(corpus_tokenizer("bytelevel", "chatml"))
    assert_same(tok, ["before <new> token"])
    tok.add_tokens(["<new>"])
    table = byte_spans.lengths_table(tok.backend_tokenizer)
    assert table is not None and table.lengths[tok.convert_tokens_to_ids("<new>")] == 5
    assert_same(tok, ["after <new> token", "<new><new>"])


def test_a_byte_level_batch_never_asks_for_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("offsets were read")

    tok = build_byte_tokenizer()
    expected = reference(tok, ["héllo <|endoftext|>", ""])
    monkeypatch.setattr(token_labels, "_ids_and_offsets", refuse)
    batch = token_labels.batch_labels(
        tok, ["héllo <|endoftext|>", ""], [bytearray(b"\x00\x00\x01\x01" + b"\x01" * 15), b""]
    )
    assert batch.example(0)[0] == expected[0][0]
    assert batch.example(0)[1][:2] == [-100, -100] and batch.example(1) == ([], [], 0)


def test_a_pipeline_changed_after_a_first_batch_is_read_again() -> None:
    from tokenizers import AddedToken, pre_tokenizers

    tok = variant(corpus_tokenizer("bytelevel", "chatml"))
    assert_same(tok, ["one batch first"])
    assert byte_spans.lengths_table(tok.backend_tokenizer) is not None
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert byte_spans.lengths_table(tok.backend_tokenizer) is None
    assert_same(tok, ["then a prefix space", "x"])
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_tokens([AddedToken("<sep>", lstrip=True)])
    table = byte_spans.lengths_table(tok.backend_tokenizer)
    assert table is not None and table.lengths[tok.convert_tokens_to_ids("<sep>")] == -1
    assert_same(tok, ["a  <sep> b"])
