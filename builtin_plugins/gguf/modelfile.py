"""An Ollama ``Modelfile`` for an exported GGUF: ``FROM``, a ``TEMPLATE`` in Ollama's Go-template syntax that
builds the prompt the run trained on, a ``PARAMETER stop`` for every end-of-turn text, and greedy decoding with
the trained context.

The template is derived from the run's own renderer, not guessed: three probe conversations (a user turn; a
system and a user turn; user, assistant, user) are rendered with marker texts, and the literal text around each
marker becomes the template's pieces. :func:`render_like_ollama` applies those pieces the way the Go template
does, so a test can check that the Modelfile builds exactly the prompt ``ift generate`` builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ift

_S, _U1, _A1, _U2 = "\u2402SYS\u2402", "\u2402U1\u2402", "\u2402A1\u2402", "\u2402U2\u2402"


@dataclass(frozen=True)
class PromptPieces:
    """The literal texts of a prompt format: ``head`` before the first user message when there is no system
    message; ``system_head`` and ``system_tail`` around a system message (the tail runs up to the first user
    message); ``user_to_assistant`` and ``assistant_to_user`` between turns; ``tail`` after the last user message
    (up to where the answer starts). ``multi_turn`` is False when the format keeps only the last user message."""

    head: str
    system_head: str | None
    system_tail: str | None
    user_to_assistant: str
    assistant_to_user: str
    tail: str
    multi_turn: bool


def prompt_pieces(prompt: Callable[[Sequence[ift.Message]], str]) -> PromptPieces:
    """The pieces of the format ``prompt`` renders (``prompt(messages)`` -> the text the answer follows)."""
    single = prompt([ift.Message("user", _U1)])
    if single.count(_U1) != 1:
        raise ift.RunError(
            "the run's template does not place the user message once in its prompt; no Ollama "
            "TEMPLATE can be derived from it"
        )
    head, tail = single.split(_U1)
    system_head = system_tail = None
    try:
        with_system = prompt([ift.Message("system", _S), ift.Message("user", _U1)])
    except ift.IftError:
        with_system = ""
    if with_system.count(_S) == 1 and with_system.count(_U1) == 1 and with_system.endswith(_U1 + tail):
        system_head, rest = with_system.split(_S)
        system_tail = rest.split(_U1)[0]
    multi_turn, between_ua, between_au = False, "", ""
    try:
        multi = prompt([ift.Message("user", _U1), ift.Message("assistant", _A1), ift.Message("user", _U2)])
    except ift.IftError:
        multi = ""
    if (
        all(multi.count(m) == 1 for m in (_U1, _A1, _U2))
        and multi.startswith(head + _U1)
        and multi.endswith(_U2 + tail)
    ):
        between_ua = multi.split(_U1)[1].split(_A1)[0]
        between_au = multi.split(_A1)[1].split(_U2)[0]
        multi_turn = True
    return PromptPieces(head, system_head, system_tail, between_ua, between_au, tail, multi_turn)


def render_like_ollama(pieces: PromptPieces, messages: Sequence[ift.Message]) -> str:
    """What the Modelfile's TEMPLATE renders for ``messages`` (system first if any, then user / assistant turns
    ending with a user turn): the same logic as :func:`go_template`, in Python."""
    system = next((m.content for m in messages if m.role == "system"), None)
    turns = [m for m in messages if m.role != "system"]
    if not pieces.multi_turn:
        turns = [m for m in turns if m.role == "user"][-1:]
    out = [
        f"{pieces.system_head}{system}{pieces.system_tail}"
        if system and pieces.system_head is not None
        else pieces.head
    ]
    for i, message in enumerate(turns):
        last = i == len(turns) - 1
        out.append(message.content)
        if message.role == "user":
            out.append(pieces.tail if last else pieces.user_to_assistant)
        elif not last:
            out.append(pieces.assistant_to_user)
    return "".join(out)


def go_template(pieces: PromptPieces) -> str:
    """The TEMPLATE text (Ollama's Go template over ``.Messages``; ``.System`` is the system message). No ``{{-``
    trim markers: they would eat whitespace (a newline after ``<|im_end|>``) that the trained format has."""
    if pieces.system_head is not None:
        start = (
            f"{{{{ if .System }}}}{_go(pieces.system_head)}{{{{ .System }}}}{_go(pieces.system_tail or '')}"
            f"{{{{ else }}}}{_go(pieces.head)}{{{{ end }}}}"
        )
    else:
        start = _go(pieces.head)
    if not pieces.multi_turn:
        return (
            start + '{{ range $i, $_ := .Messages }}{{ if and (eq .Role "user") '
            "(eq (len (slice $.Messages $i)) 1) }}{{ .Content }}" + _go(pieces.tail) + "{{ end }}{{ end }}"
        )
    return (
        start + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        '{{ if eq .Role "user" }}{{ .Content }}{{ if $last }}'
        + _go(pieces.tail)
        + "{{ else }}"
        + _go(pieces.user_to_assistant)
        + "{{ end }}"
        '{{ else if eq .Role "assistant" }}{{ .Content }}{{ if not $last }}'
        + _go(pieces.assistant_to_user)
        + "{{ end }}{{ end }}{{ end }}"
    )


def ollama_modelfile(
    gguf_name: str, pieces: PromptPieces, stops: Sequence[str], *, context_length: int, note: str = ""
) -> str:
    """The Modelfile text: FROM the GGUF beside it, the TEMPLATE, the stop texts, greedy decoding."""
    template = go_template(pieces)
    if '"""' in template:
        raise ift.RunError('the prompt format contains """, which an Ollama Modelfile cannot quote')
    lines = [
        f"# Ollama Modelfile written by ift {ift.__version__}{': ' + note if note else ''}",
        "# ollama create NAME -f Modelfile   (then: ollama run NAME)",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
    ]
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {_quote(stop)}")
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {int(context_length)}"]
    return "\n".join(lines) + "\n"


def _go(text: str) -> str:
    """Literal text inside a Go template: ``{{`` must not start an action."""
    return text.replace("{{", '{{ "{{" }}')


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
