"""The Ollama TEMPLATE pieces derived from a prompt format rebuild that format's prompts: a Llama-2 style format
that puts the system message inside the first user turn, a format that keeps only the last user message, and
literal ``{{`` in the format (quoted so Go does not read it as an action)."""

from __future__ import annotations

from collections.abc import Sequence

import ift
from ift.builtin_plugins.gguf.modelfile import go_template, ollama_modelfile, prompt_pieces, render_like_ollama


def llama2(messages: Sequence[ift.Message]) -> str:
    system = next((m.content for m in messages if m.role == "system"), None)
    out, first = "<s>", True
    for m in (m for m in messages if m.role != "system"):
        if m.role == "user":
            sys_text = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if first and system else ""
            out += f"[INST] {sys_text}{m.content} [/INST]"
            first = False
        else:
            out += f" {m.content} </s><s>"
    return out


def last_only(messages: Sequence[ift.Message]) -> str:
    user = [m for m in messages if m.role == "user"][-1]
    return "{{literal}} ### Instruction:\n" + user.content + "\n\n### Response:\n"


CONVERSATIONS = [
    [ift.Message("user", "hi")],
    [ift.Message("system", "be kind"), ift.Message("user", "hi")],
    [ift.Message("user", "a"), ift.Message("assistant", "b"), ift.Message("user", "c")],
    [ift.Message("system", "s"), ift.Message("user", "a"), ift.Message("assistant", "b"), ift.Message("user", "c")],
]


def test_llama2_style_format_round_trips() -> None:
    pieces = prompt_pieces(llama2)
    assert pieces.multi_turn and pieces.system_head == "<s>[INST] <<SYS>>\n"
    for conversation in CONVERSATIONS:
        assert render_like_ollama(pieces, conversation) == llama2(conversation)
    template = go_template(pieces)
    assert "{{ if .System }}<s>[INST] <<SYS>>\n{{ .System }}\n<</SYS>>\n\n{{ else }}<s>[INST] {{ end }}" in template
    assert "{{-" not in template


def test_single_turn_format_keeps_the_last_user_message_and_quotes_braces() -> None:
    pieces = prompt_pieces(last_only)
    assert not pieces.multi_turn
    for conversation in CONVERSATIONS:
        assert render_like_ollama(pieces, conversation) == last_only(conversation)
    text = ollama_modelfile("m.gguf", pieces, ["</s>", "\n### Instruction:"], context_length=512)
    assert '{{ "{{" }}literal}}' in text
    assert 'PARAMETER stop "</s>"\nPARAMETER stop "\\n### Instruction:"\n' in text
    assert text.splitlines()[2] == "FROM ./m.gguf" and "PARAMETER num_ctx 512" in text
