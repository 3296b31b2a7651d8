"""Exact masks with the real SmolLM2-135M-Instruct tokenizer and its published chat template (from the GGUF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.renderers import ChatTemplateRenderer
from ift.records import InstructionRecord, Message

M = Message
CONVERSATIONS = [
    [
        M("system", "Be brief."),
        M("user", "Hi"),
        M("assistant", "Hello."),
        M("user", "2+2?"),
        M("assistant", "4"),
        M("user", "Repeat: assistant"),
        M("assistant", "assistant"),
    ],
    [M("assistant", "Welcome!"), M("user", "Say hi"), M("assistant", "  hi\n")],
    [M("user", "中文 and emoji?"), M("assistant", "你好 👍 Café\nsecond line")],
]


def test_smollm2_labels_are_exact(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    renderer = ChatTemplateRenderer(ChatTemplateRenderer.Config(), base_dir=Path("."))
    renderer.bind(tok)
    adapter = CausalLMAdapter(CausalLMAdapter.Config(name_or_path="unused"), base_dir=Path("."))
    adapter._adds_bos = False
    for i, messages in enumerate(CONVERSATIONS):
        dicts = [m.to_dict() for m in messages]
        segments = renderer.render(InstructionRecord(str(i), "real", messages))
        example = adapter.encode(tok, segments, source="real", record_id=str(i))
        template_ids = tok.apply_chat_template(dicts, tokenize=True)
        template_ids = list(template_ids["input_ids"] if hasattr(template_ids, "keys") else template_ids)
        assert example.input_ids == template_ids
        answers = [m.content + "<|im_end|>" for m in messages if m.role == "assistant"]
        assert [s.text for s in segments if s.trainable] == answers
        trained = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100]
        if i == 1:  # the header's '\n' and the answer's first space are one token ('ĊĠ'): it straddles, untrained
            assert example.straddling == 1
            assert tok.decode(trained) == "".join(answers).replace("  hi", " hi")
        else:
            assert example.straddling == 0
            assert tok.decode(trained) == "".join(answers)
