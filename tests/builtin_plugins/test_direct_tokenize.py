"""The data path's tokenizer shortcuts give exactly what the reference path gives.

- Calling the fast tokenizer's backend directly (``token_labels.direct_backend``) must give the ids and offsets of
  ``tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)``: for every chat template of the test
  corpus under every tokenizer style, special-token strings with ``split_special_tokens`` on and off, empty
  strings, unicode and long texts; a tokenizer of a kind not understood falls back to the call itself.
- Labelling a whole batch at once (``token_labels.batch_labels``) must give the labels of
  ``labels_from_offsets`` one text at a time.
- Garbage-collector pauses are not charged to a record's rendering time budget, and the data path's ``gc.freeze``
  is undone afterwards, even when encoding fails.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import pytest
from test_chat_template_corpus import CONVERSATIONS, STYLES, TEMPLATES, family  # same folder (rootdir-less modules)
from test_chat_template_corpus import tokenizer as corpus_tokenizer

import ift
from ift.builtin_plugins import token_labels
from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.renderers import ChatTemplateRenderer, RenderError
from ift.config import TrainerConfig
from ift.records import InstructionRecord, Message
from ift.templating import merge_segments


def reference(tokenizer: Any, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """What the data path computed before the shortcuts: the tokenizer's own call, or for a tokenizer whose
    post-processor trims offsets, its untrimmed copy (one text at a time, with the tokenizer's split setting)."""
    backend = tokenizer.backend_tokenizer
    untrimmed = token_labels._untrimmed(backend)
    if untrimmed is None:
        return token_labels._called(tokenizer, texts)
    ids = token_labels._called(tokenizer, texts)  # the ids never depend on trimming
    out = []
    for text, (expected_ids, _) in zip(texts, ids, strict=True):
        untrimmed.encode_special_tokens = tokenizer.split_special_tokens
        enc = untrimmed.encode(text, add_special_tokens=False)
        untrimmed.encode_special_tokens = False
        assert list(enc.ids) == expected_ids
        out.append((list(enc.ids), [tuple(o) for o in enc.offsets]))
    return out


def assert_same(tokenizer: Any, texts: list[str], masks: list[bytearray] | None = None) -> None:
    expected = reference(tokenizer, texts)
    assert token_labels.encode_batch_with_offsets(tokenizer, texts) == expected
    assert [token_labels.encode_with_offsets(tokenizer, t) for t in texts] == expected
    masks = masks if masks is not None else [bytearray(i % 3 == 0 for i in range(len(t))) for t in texts]
    batch = token_labels.batch_labels(tokenizer, texts, masks)
    for i, ((ids, offsets), mask) in enumerate(zip(expected, masks, strict=True)):
        one = token_labels.labels_from_offsets(ids, offsets, mask)
        assert batch.example(i) == (ids, one.labels, len(one.straddling)), i


def rendered(template: str, style: str) -> tuple[Any, list[str], list[bytearray]]:
    fam = family(template)
    tok = corpus_tokenizer(style, fam, template)
    renderer = ChatTemplateRenderer(ChatTemplateRenderer.Config(), base_dir=Path("."))
    renderer.bind(tok)
    texts, masks = [], []
    for name, messages in CONVERSATIONS.items():
        try:
            segments = renderer.render(InstructionRecord(name, "corpus", messages))
        except RenderError:
            continue
        text, mask = token_labels.trainable_mask(segments)
        texts.append(text)
        masks.append(mask)
    return tok, texts, masks


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_every_corpus_template_tokenizes_and_labels_as_the_tokenizer_call(template: str, style: str) -> None:
    tok, texts, masks = rendered(template, style)
    assert token_labels.direct_backend(tok) is tok.backend_tokenizer
    assert texts
    assert_same(tok, texts, masks)
    # the adapter's batched path and its one-at-a-time path (the reference of test_chat_template_corpus)
    adapter = CausalLMAdapter(CausalLMAdapter.Config(name_or_path="unused"), base_dir=Path("."))
    adapter._adds_bos = style.endswith("-bos")
    items = []
    for i, (text, mask) in enumerate(zip(texts, masks, strict=True)):
        segments = merge_segments([ift.Segment(ch, bool(m)) for ch, m in zip(text, mask, strict=True)])
        items.append((InstructionRecord(str(i), "corpus", [Message("user", "q")]), segments))
    one = [adapter.encode_record(tok, record, segments) for record, segments in items]
    assert adapter.encode_many(tok, items) == one


SPECIAL_TEXTS = [
    "",
    "<|endoftext|>",
    "a<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyes<|endoftext|>",
    "<|im_start|><|im_end|><|pad|>",
    "half <|im_sta rt|> and <|im_end| broken",
    "你好，世界 👍🎉 Café crème, naïve \u0301\u200d\ufeff",
    "\n\n\t  leading and trailing  \n",
    "x" * 50_000 + "<|endoftext|>" + "é" * 10_000,
]


@pytest.mark.parametrize("split", [False, True])
def test_special_token_text_empty_unicode_and_long_texts_in_both_split_modes(split: bool) -> None:
    tok = build_byte_tokenizer()
    tok.split_special_tokens = split
    assert_same(tok, SPECIAL_TEXTS)
    tok.backend_tokenizer.encode_special_tokens = not split  # (the reference call above left it as `split`)
    with_split = token_labels.encode_with_offsets(tok, "<|endoftext|>")[0]
    assert (len(with_split) == 1) is not split  # one special token, or its 13 bytes
    assert tok.backend_tokenizer.encode_special_tokens is (not split)  # the backend's own setting is back


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("style", ["bytelevel-trim", "nosplit-trim", "metaspace-bos"])
def test_special_token_text_under_trimming_and_metaspace_tokenizers(style: str, split: bool) -> None:
    tok = corpus_tokenizer(style, "chatml")
    tok.split_special_tokens = split
    try:
        assert_same(tok, SPECIAL_TEXTS + ["<s> <|im_start|>system\nYou are terse.<|im_end|>\n"])
    finally:
        tok.split_special_tokens = False


def test_an_added_token_is_matched_as_the_tokenizer_call_matches_it() -> None:
    tok = build_byte_tokenizer()
    tok.add_tokens(["hello world", "<tool>"])
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>"]})
    texts = ["say hello world <tool> now <think>x</think>", "hello worldhello world<tool><tool>"]
    assert_same(tok, texts)
    tok.split_special_tokens = True
    assert_same(tok, texts)


def test_backend_truncation_and_padding_are_off_for_the_call_and_restored_after() -> None:
    tok = build_byte_tokenizer()
    backend = tok.backend_tokenizer
    texts = ["a fairly long text " * 20, "short", ""]
    expected = reference(tok, texts)  # the call switches truncation and padding off
    backend.enable_truncation(max_length=8)
    backend.enable_padding(pad_id=tok.pad_token_id, pad_token=tok.pad_token)
    truncation, padding = backend.truncation, backend.padding
    got = token_labels.encode_batch_with_offsets(tok, texts)
    assert got == expected
    assert backend.truncation == truncation and backend.padding == padding
    backend.no_truncation()
    backend.no_padding()


def test_a_tokenizer_of_another_kind_falls_back_to_the_call() -> None:
    from transformers import PreTrainedTokenizerFast

    class Shouting(PreTrainedTokenizerFast):  # changes the call: the shortcut must not be taken
        def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
            upper = [t.upper() for t in text] if isinstance(text, list) else text.upper()
            return super().__call__(upper, *args, **kwargs)

    base = build_byte_tokenizer()
    tok = Shouting(tokenizer_object=base.backend_tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>")
    assert token_labels.direct_backend(tok) is None
    texts = ["quiet words", "<|endoftext|> and more"]
    got = token_labels.encode_batch_with_offsets(tok, texts)
    assert got == token_labels._called(tok, texts)
    assert got[0][0] == token_labels._called(base, ["QUIET WORDS"])[0][0]
    assert_same(tok, texts)

    class NotATokenizer:
        backend_tokenizer = base.backend_tokenizer

    assert token_labels.direct_backend(NotATokenizer()) is None
    patched = build_byte_tokenizer()
    patched._encode_plus = patched._encode_plus  # an instance that replaces a step of the call
    assert token_labels.direct_backend(patched) is None


def test_batch_labels_of_empty_texts_and_empty_batches() -> None:
    tok = build_byte_tokenizer()
    assert_same(tok, ["", "", "ab", ""], [bytearray(), bytearray(), bytearray(b"\x00\x01"), bytearray()])
    batch = token_labels.batch_labels(tok, [], [])
    assert len(batch.bounds) == 1 and batch.ids.size == 0


# --- garbage collection and the time budget ------------------------------------------------------------------


def _slow_collection() -> tuple[list[Any], float]:
    """Many live container objects, and how long one full collection over them takes."""
    junk = [[i] for i in range(1_500_000)]
    began = time.perf_counter()
    gc.collect()
    return junk, time.perf_counter() - began


def test_a_garbage_collection_inside_a_time_budget_is_not_charged() -> None:
    from ift.templating import RenderBudgetExceeded, time_budget

    junk, seconds = _slow_collection()
    budget = max(seconds / 4, 0.005)
    with time_budget(budget):
        gc.collect()  # several budgets' worth, all in the collector
        sum(range(1000))  # the timer's signal is handled here, after the collection
    with pytest.raises(RenderBudgetExceeded), time_budget(budget):
        end = time.perf_counter() + budget * 6
        while time.perf_counter() < end:  # the template's own time is still charged
            pass
    del junk
    assert not any(type(cb).__name__ == "_GCClock" for cb in gc.callbacks)


def test_a_render_is_not_charged_for_a_collection_during_it() -> None:
    from ift.builtin_plugins.renderers import AlpacaRenderer

    junk, seconds = _slow_collection()
    budget = max(seconds / 4, 0.005)
    renderer = AlpacaRenderer(AlpacaRenderer.Config(max_seconds=budget), base_dir=Path("."))
    renderer.bind(build_byte_tokenizer())
    real = renderer.template.render

    def collecting(*args: Any, **kwargs: Any) -> str:
        gc.collect()  # a full pass over many live objects, as a large run's collector makes during a render
        return real(*args, **kwargs)

    def spinning(*args: Any, **kwargs: Any) -> str:
        end = time.perf_counter() + budget * 6
        while time.perf_counter() < end:
            pass
        return real(*args, **kwargs)

    record = InstructionRecord("r", "s", [Message("user", "q"), Message("assistant", "a")])
    renderer.template.render = collecting  # type: ignore[method-assign]
    assert any(s.trainable for s in renderer.render(record))
    renderer.template.render = spinning  # type: ignore[method-assign]
    with pytest.raises(RenderError, match="max_seconds"):
        renderer.render(record)
    del junk


def test_encoding_freezes_the_collector_and_always_unfreezes_it() -> None:
    from ift.data import DataReport, encode_records, frozen_gc

    assert gc.get_freeze_count() == 0
    seen = []

    class Watching(ChatTemplateRenderer):
        def render(self, record: InstructionRecord) -> list[ift.Segment]:
            seen.append(gc.get_freeze_count())
            if record.id == "bad":
                raise RenderError("refused")
            return super().render(record)

    tok = build_byte_tokenizer()
    renderer = Watching(ChatTemplateRenderer.Config(), base_dir=Path("."))
    renderer.bind(tok)
    adapter = CausalLMAdapter(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config={"model_type": "llama"}), base_dir=Path(".")
    )
    records = [InstructionRecord(f"r{i}", "s", [Message("user", "q"), Message("assistant", "a")]) for i in range(3)]
    cfg = TrainerConfig()
    examples, kept = encode_records(records, renderer, adapter, tok, cfg, "train", DataReport())
    assert len(examples) == 3 and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0
    seen.clear()
    with pytest.raises(ift.DataError):
        encode_records(
            [*records, InstructionRecord("bad", "s", records[0].messages)],
            renderer,
            adapter,
            tok,
            cfg,
            "train",
            DataReport(),
        )
    assert seen and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    # a process that froze objects of its own keeps its freeze
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with frozen_gc():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_batch_labels_turns_the_collector_back_on_even_when_tokenizing_fails() -> None:
    tok = build_byte_tokenizer()
    token_labels.batch_labels(tok, ["some text"], [bytearray(9)])
    assert gc.isenabled()

    class Failing:
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            assert not gc.isenabled()  # paused while the offsets are converted
            raise RuntimeError("tokenizer failed")

    with pytest.raises(RuntimeError, match="tokenizer failed"):
        token_labels.batch_labels(Failing(), ["x"], [bytearray(1)])
    assert gc.isenabled()
    gc.disable()  # a process that runs with the collector off keeps it off
    try:
        token_labels.batch_labels(tok, ["some text"], [bytearray(9)])
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_batch_labels_read_any_non_zero_byte_as_trainable() -> None:
    tok = build_byte_tokenizer()
    texts = ["abcdef", "ghij"]
    masks = [bytearray(b"\x00\x02\x00\xff\x01\x00"), bytearray(b"\x07\x00\x00\x03")]
    assert_same(tok, texts, masks)
