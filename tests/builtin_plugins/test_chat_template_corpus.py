"""Exact labels for real chat templates (tests/data/chat_templates, sources in SOURCES.md) x conversations x
tokenizer styles built here with ``tokenizers``.

The expected trainable characters are computed here, independently of ift: each assistant content is wrapped in
sentinel characters of this test's own, the template rendered, the sentinels' positions read off, and the
family's end-of-turn text (a table below, from each model's documentation) checked to follow the content. Token
labels are then derived from the tokenizer's exact offsets by the documented policy: a token is trained when it
begins on a trainable character; a token that begins before and reaches in straddles and is not trained.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.renderers import ChatTemplateRenderer, RenderError
from ift.records import InstructionRecord, Message

CORPUS = Path(__file__).parents[1] / "data" / "chat_templates"
TEMPLATES = sorted(p.name for p in CORPUS.glob("*.jinja"))

# family -> (bos, eos, end-of-turn text written right after an answer; None: the template writes none)
FAMILIES: dict[str, tuple[str | None, str, str | None]] = {
    "alpaca": ("<s>", "</s>", "</s>"),
    "amberchat": ("<s>", "</s>", None),
    "chatml": ("<s>", "</s>", "<|im_end|>"),
    "chatqa": ("<s>", "</s>", None),
    "falcon-instruct": ("<s>", "</s>", None),
    "gemma-it": ("<bos>", "<eos>", "<end_of_turn>"),
    "granite-3.0-instruct": (None, "<|end_of_text|>", "<|end_of_text|>"),
    "llama-2-chat": ("<s>", "</s>", " </s>"),
    "llama-3-instruct": ("<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"),
    "mistral-instruct": ("<s>", "</s>", "</s>"),
    "openchat-3.5": ("<s>", "</s>", "<|end_of_turn|>"),
    "phi-3": ("<s>", "<|endoftext|>", "<|end|>"),
    "phi-3-small": ("<|endoftext|>", "<|endoftext|>", "<|end|>"),
    "qwen2.5-instruct": (None, "<|im_end|>", "<|im_end|>"),
    "saiga": ("<s>", "</s>", "</s>"),
    "solar-instruct": ("<s>", "</s>", None),
    "vicuna": ("<s>", "</s>", "</s>"),
    "zephyr": ("<s>", "</s>", "</s>"),
}
SPECIAL = sorted(
    {t for bos, eos, _ in FAMILIES.values() for t in (bos, eos) if t}
    | {
        "<|im_start|>",
        "<|im_end|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "<|end|>",
        "<|end_of_turn|>",
        "<|start_of_role|>",
        "<|end_of_role|>",
    }
)

M = Message
CONVERSATIONS: dict[str, list[Message]] = {
    "system-3-turns": [
        M("system", "You are terse."),
        M("user", "Hi"),
        M("assistant", "Hello."),
        M("user", "Capital of France?"),
        M("assistant", "Paris."),
        M("user", "And Spain?"),
        M("assistant", "Madrid."),
    ],
    "opening-greeting": [M("assistant", "Welcome! How can I help?"), M("user", "Say hi."), M("assistant", "Hi!")],
    "answer-in-question": [M("user", "Repeat exactly: yes please"), M("assistant", "yes please")],
    "role-word": [
        M("user", "Who answers here?"),
        M("assistant", "assistant"),
        M("user", "And who asks?"),
        M("assistant", "user"),
    ],
    "short": [M("user", "Pick A or B."), M("assistant", "A"), M("user", "6*7?"), M("assistant", "42")],
    "whitespace": [
        M("user", "Indent it."),
        M("assistant", "  leading and trailing  \n"),
        M("user", "again"),
        M("assistant", "\nstarts with a newline"),
    ],
    "multi-line": [M("user", "List two."), M("assistant", "Line one\nLine two\n\n- item 1\n- item 2")],
    "unicode": [M("user", "Greet in Chinese, emoji and French."), M("assistant", "你好，世界 👍🎉 Café crème, naïve")],
    "two-users": [M("user", "first"), M("user", "second"), M("assistant", "answer")],
}
STYLES = ["bytelevel", "bytelevel-trim", "nosplit", "nosplit-trim", "metaspace-bos", "bytelevel-bos"]
OPEN, CLOSE = 0xE800, 0xE900  # this test's own sentinels (ift uses others)


def family(template: str) -> str:
    return template.removesuffix(".jinja").removesuffix(".compact")


def _training_text() -> list[str]:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = lambda message: ""
    texts = []
    for name in TEMPLATES:
        bos, eos, _ = FAMILIES[family(name)]
        template = env.from_string((CORPUS / name).read_text(encoding="utf-8"))
        for messages in CONVERSATIONS.values():
            texts.append(
                template.render(
                    messages=[m.to_dict() for m in messages],
                    bos_token=bos or "",
                    eos_token=eos,
                    add_generation_prompt=True,
                )
            )
    return texts * 3


@functools.cache
def backend(style: str) -> Any:
    """The tokenizers.Tokenizer of a style, trained on the corpus renderings (merges form role headers)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if style.startswith("metaspace"):
        tok = Tokenizer(models.BPE(byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet: list[str] = []
        extra = [f"<0x{i:02X}>" for i in range(256)]
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not style.startswith("nosplit"))
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        extra = []
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=SPECIAL + extra, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_training_text(), trainer)
    if not style.startswith("metaspace"):
        tok.post_processor = processors.ByteLevel(trim_offsets=style.endswith("-trim"))
    return tok


@functools.cache
def tokenizer(style: str, fam: str, template: str | None = None) -> Any:
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos, _ = FAMILIES[fam]
    tok = Tokenizer.from_str(backend(style).to_str())
    if style.endswith("-bos") and bos:
        steps = [] if style.startswith("metaspace") else [processors.ByteLevel(trim_offsets=False)]
        tok.post_processor = processors.Sequence(
            [*steps, processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])]
        )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos)
    if template is not None:
        wrapped.chat_template = (CORPUS / template).read_text(encoding="utf-8")
    return wrapped


def expected_text(tok: Any, messages: list[Message], eot: str | None) -> tuple[str, bytearray] | None:
    """The training text and its trainable characters, from a rendering with this test's sentinels; None when the
    template refuses the conversation."""
    from jinja2 import TemplateError

    dicts = [m.to_dict() for m in messages]
    try:
        real = tok.apply_chat_template(dicts, tokenize=False)
    except TemplateError:
        return None
    for inside in (False, True):
        marked = []
        for j, m in enumerate(dicts):
            if m["role"] != "assistant":
                marked.append(m)
                continue
            c = m["content"]
            core = c.strip() if inside else c
            lead = c[: len(c) - len(c.lstrip())] if inside else ""
            trail = c[len(lead) + len(core) :] if inside else ""
            marked.append({**m, "content": lead + chr(OPEN + j) + core + chr(CLOSE + j) + trail})
        out = tok.apply_chat_template(marked, tokenize=False)
        if "".join(ch for ch in out if not OPEN <= ord(ch) < CLOSE + 256) == real:
            break
    else:
        raise AssertionError("sentinels do not survive this template")
    text, mask = [], bytearray()
    i = 0
    while i < len(out):
        ch = out[i]
        if OPEN <= ord(ch) < OPEN + 256:
            close = out.index(chr(CLOSE + ord(ch) - OPEN), i)
            content = out[i + 1 : close]
            text.append(content)
            mask += b"\x01" * len(content)
            i = close + 1
            if eot is None:
                eos = tok.eos_token
                text.append(eos)
                mask += b"\x01" * len(eos)
            else:
                assert out.startswith(eot, i), (out[i : i + 20], eot)
                text.append(eot)
                mask += b"\x01" * len(eot)
                i += len(eot)
            continue
        text.append(ch)
        mask += b"\x00"
        i += 1
    return "".join(text), mask


def expected_labels(style: str, fam: str, text: str, mask: bytearray) -> tuple[list[int], list[int], int]:
    exact = tokenizer(style.removesuffix("-trim"), fam)  # the same vocabulary, offsets never trimmed
    enc = exact(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels, straddles = list(enc["input_ids"]), [], 0
    for tid, (a, b) in zip(ids, enc["offset_mapping"], strict=True):
        if b > a:
            labels.append(tid if mask[a] else -100)
            straddles += (not mask[a]) and any(mask[a:b])
        else:
            sides = [mask[p] for p in (a - 1, a) if 0 <= p < len(mask)]
            labels.append(tid if sides and all(sides) else -100)
    return ids, labels, straddles


def _template_ids(tok: Any, messages: list[Message]) -> list[int]:
    out = tok.apply_chat_template([m.to_dict() for m in messages], tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("template", TEMPLATES)
def test_labels_are_exact_for_every_conversation(template: str, style: str) -> None:
    fam = family(template)
    bos, eos, eot = FAMILIES[fam]
    tok = tokenizer(style, fam, template)
    renderer = ChatTemplateRenderer(ChatTemplateRenderer.Config(), base_dir=Path("."))
    renderer.bind(tok)
    adapter = CausalLMAdapter(CausalLMAdapter.Config(name_or_path="unused"), base_dir=Path("."))
    adapter._adds_bos = style.endswith("-bos") and bos is not None
    for name, messages in CONVERSATIONS.items():
        record = InstructionRecord(name, "corpus", messages)
        expected = expected_text(tok, messages, eot)
        if expected is None:
            with pytest.raises(RenderError, match="the chat template refuses record"):
                renderer.render(record)
            continue
        text, mask = expected
        segments = renderer.render(record)
        example = adapter.encode(tok, segments, source="corpus", record_id=name)
        ids, labels, straddles = expected_labels(style, fam, text, mask)
        if adapter._adds_bos and not text.lstrip().startswith(bos or "\0"):
            ids, labels = [tok.bos_token_id, *ids], [-100, *labels]
        assert "".join(s.text for s in segments) == text, name
        assert example.input_ids == ids, name
        assert example.labels == labels, (
            name,
            [(tok.convert_ids_to_tokens(i), lab != -100) for i, lab in zip(ids, example.labels, strict=True)],
        )
        assert example.straddling == straddles, name
        if eot is not None:  # nothing inserted: exactly the template's own token ids
            template_ids = _template_ids(tok, messages)
            assert example.input_ids[len(example.input_ids) - len(template_ids) :] == template_ids, name
        leading = [i for i in example.input_ids[:4] if i == tok.bos_token_id]
        assert len(leading) <= 1, f"{name}: BOS doubled"
    if eot is None:
        assert any("no end-of-turn text" in n for n in renderer.notices())
