"""The real SmolLM2 tokenizer: the data path's direct backend call and batched labels give exactly what
``tokenizer(...)`` and ``labels_from_offsets`` give (tests/builtin_plugins/test_direct_tokenize.py for the rest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ift.builtin_plugins import token_labels
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.renderers import ChatTemplateRenderer
from ift.records import InstructionRecord, Message

CHATS = [
    [Message("user", "Hi"), Message("assistant", "Hello.")],
    [Message("system", "Be terse."), Message("user", "2+2?"), Message("assistant", " 4 \n")],
    [Message("user", "Say <|im_end|> and <|endoftext|>"), Message("assistant", "<|im_start|>user is a token")],
    [Message("user", "你好"), Message("assistant", "你好，世界 👍🎉 Café crème, naïve" * 40)],
]


@pytest.mark.parametrize("split", [False, True])
def test_smollm2_direct_call_and_batch_labels_equal_the_tokenizer_call(smollm2_tokenizer: Any, split: bool) -> None:
    tok = smollm2_tokenizer
    assert token_labels.direct_backend(tok) is tok.backend_tokenizer
    renderer = ChatTemplateRenderer(ChatTemplateRenderer.Config(), base_dir=Path("."))
    renderer.bind(tok)
    masks = [
        token_labels.trainable_mask(renderer.render(InstructionRecord(str(i), "s", c))) for i, c in enumerate(CHATS)
    ]
    texts = [t for t, _ in masks] + ["", "<|im_start|><|im_end|>", "x" * 20_000]
    trainable = [m for _, m in masks] + [bytearray(), bytearray(b"\x01" * 22), bytearray(b"\x01" * 20_000)]
    old = tok.split_special_tokens
    tok.split_special_tokens = split
    try:
        expected = token_labels._called(tok, texts)
        assert token_labels.encode_batch_with_offsets(tok, texts) == expected
        batch = token_labels.batch_labels(tok, texts, trainable)
        for i, ((ids, offsets), mask) in enumerate(zip(expected, trainable, strict=True)):
            one = token_labels.labels_from_offsets(ids, offsets, mask)
            assert batch.example(i) == (ids, one.labels, len(one.straddling)), i
        adapter = CausalLMAdapter(CausalLMAdapter.Config(name_or_path="unused"), base_dir=Path("."))
        items = [
            (InstructionRecord(str(i), "s", c), renderer.render(InstructionRecord(str(i), "s", c)))
            for i, c in enumerate(CHATS)
        ]
        assert adapter.encode_many(tok, items) == [adapter.encode_record(tok, r, s) for r, s in items]
    finally:
        tok.split_special_tokens = old
