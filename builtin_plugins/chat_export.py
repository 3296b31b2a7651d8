"""The run's prompt format as a Hugging Face chat template, so other tools build exactly the prompts ift trained on.

A recipe template (``plain``, ``alpaca``, ``chatml``, a user file) is Jinja2 over ``messages``; transformers
renders chat templates in its own sandbox with ``trim_blocks`` / ``lstrip_blocks`` on and without ift's
``{% generation %}`` sentinels. :func:`chat_template_for` therefore embeds the recipe template's own source,
rewritten token by token so that whitespace control means the same there (``{%+ ... +%}`` on every tag that
had none), wrapped in a few lines that build the same variables ift passes (``messages`` as role/content
dicts, the ``eos_token`` / ``bos_token`` strings the run trained with) and cut the output where ift's prompt
ends (before the last trained span, an empty assistant turn appended for ``add_generation_prompt``).

A template that reads what messages do not carry (``record``) or uses filters, tests or globals a plugin
added through ``ift_prepare_jinja_env`` cannot be exported: then no chat template is saved and the reason is
recorded. Whatever is exported is then checked by :func:`verify_chat_template` against ift's own renderer on
probe conversations and on the run's records; any difference means no template is saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ift
from ift.templating import GEN_END, GEN_START, sandboxed_environment

#: Names a recipe template may read that a chat template can provide.
_PROVIDED = {"messages", "eos_token", "bos_token"}


@dataclass
class ChatTemplateExport:
    """What the saved tokenizer's ``chat_template`` will be: ``template`` (None: none is saved) and why."""

    template: str | None
    origin: str


def jinja_string(text: str) -> str:
    """A Jinja2 string literal for ``text`` (Jinja decodes literals with Python's unicode-escape)."""
    return '"' + text.encode("unicode-escape").decode("ascii").replace('"', '\\"') + '"'


def _plus_tag(value: str, opener: str, closer: str) -> str:
    """``value`` (a tag's begin or end token) with ``+`` added where it has no whitespace modifier."""
    if value.startswith(opener) and value[len(opener) : len(opener) + 1] not in ("-", "+"):
        return opener + "+" + value[len(opener) :]
    at = value.find(closer)
    if at >= 0 and (at == 0 or value[at - 1] not in "-+"):
        return value[:at] + "+" + value[at:]
    return value


def _rewrite_source(source: str, env: Any) -> str:
    """The template source with the same meaning under ``trim_blocks`` + ``lstrip_blocks``, comments removed
    and ``{% generation %}`` / ``{% endgeneration %}`` turned into the sentinel characters."""
    tokens = list(env.lexer.tokeniter(source, None))
    out: list[str] = []
    i = 0
    while i < len(tokens):
        _, kind, value = tokens[i]
        if kind == "block_begin":
            j = i + 1
            names = []
            while j < len(tokens) and tokens[j][1] != "block_end":
                if tokens[j][1] != "whitespace":
                    names.append(tokens[j][2])
                j += 1
            if names in (["generation"], ["endgeneration"]) and j < len(tokens):
                end = tokens[j][2]
                marker = GEN_START if names == ["generation"] else GEN_END
                left = "-" if value.endswith("-") else ""
                right = "-" if end.startswith("-") else ""
                rest = end[end.index("%}") + 2 :]
                out.append("{{" + left + " " + jinja_string(marker) + " " + right + "}}" + rest)
                i = j + 1
                continue
            out.append(_plus_tag(value, "{%", "%}"))
        elif kind == "block_end":
            out.append(_plus_tag(value, "{%", "%}"))
        elif kind == "raw_begin":  # a {% raw %} block becomes one string literal (no tag there to trim)
            body = tokens[i + 1][2] if i + 1 < len(tokens) and tokens[i + 1][1] == "data" else ""
            i += 1 if body else 0
            out.append(("{{-" if value.startswith("{%-") else "{{") + " " + jinja_string(body) + " ")
        elif kind == "raw_end":
            out.append("}}" + value[value.index("%}") + 2 :])
        elif kind == "comment_begin":
            out.append("{{-" if value.endswith("-") else "{{")
        elif kind == "comment":
            out.append(" '' ")
        elif kind == "comment_end":
            out.append(("-}}" if value.startswith("-") else "}}") + value[value.index("#}") + 2 :])
        else:
            out.append(value)
        i += 1
    return "".join(out)


def _unsupported(renderer: Any) -> str | None:
    """Why the renderer's template cannot be a chat template, or None."""
    from jinja2 import meta, nodes

    env = renderer.template.environment
    stock = sandboxed_environment(None)
    tree = env.parse(renderer.source_text)
    names = meta.find_undeclared_variables(tree)
    if "record" in names:
        return "it reads `record` (id, source, task, label, metadata), which chat messages do not carry"
    for name in sorted(names - _PROVIDED):
        if name not in stock.globals or env.globals.get(name) is not stock.globals[name]:
            return f"it uses {name!r}, a global that a chat template does not have (an ift_prepare_jinja_env plugin?)"
    for node in tree.find_all(nodes.Filter):
        if node.name == "tojson":
            return "it uses the tojson filter, which transformers' chat templates define differently"
        if node.name not in stock.filters or env.filters.get(node.name) is not stock.filters[node.name]:
            return f"it uses the filter {node.name!r}, added by an ift_prepare_jinja_env plugin"
    for test in tree.find_all(nodes.Test):
        if test.name not in stock.tests or env.tests.get(test.name) is not stock.tests[test.name]:
            return f"it uses the test {test.name!r}, added by an ift_prepare_jinja_env plugin"
    return None


def _wrap(body: str, eos: str, bos: str, bos_prefix: bool) -> str:
    """The chat template around a rewritten recipe template ``body``."""
    s, e = jinja_string(GEN_START), jinja_string(GEN_END)
    prefix = (
        (
            f"{{%- if not ift_out.startswith({jinja_string(bos)}) -%}}"
            f"{{%- set ift_out = {jinja_string(bos)} + ift_out -%}}{{%- endif -%}}"
        )
        if bos_prefix and bos
        else ""
    )
    return (
        "{#- Written by ift: the run's own prompt format (its recipe template, embedded below), so that\n"
        "    apply_chat_template builds exactly the prompts and training texts of the run. -#}\n"
        "{%- set ift_state = namespace(messages=[], text='', cut=-1, trained=false) -%}\n"
        "{%- for m in messages -%}\n"
        f"{{%- if m['content'] is string and ({s} in m['content'] or {e} in m['content']) -%}}"
        "{{- raise_exception('message content holds the reserved characters U+E000/U+E001') -}}{%- endif -%}\n"
        "{%- set ift_state.messages = ift_state.messages + [{'role': m['role'], 'content': m['content']}] -%}\n"
        "{%- endfor -%}\n"
        "{%- set ift_prompt = add_generation_prompt is defined and add_generation_prompt -%}\n"
        "{%- if ift_prompt -%}{%- set ift_state.messages = ift_state.messages + "
        "[{'role': 'assistant', 'content': ''}] -%}{%- endif -%}\n"
        f"{{%- set ift_text +%}}{{%+ with messages = ift_state.messages, eos_token = {jinja_string(eos)}, "
        f"bos_token = {jinja_string(bos)} +%}}{body}{{%+ endwith +%}}{{%+ endset -%}}\n"
        f"{{%- set ift_chunks = ift_text.split({s}) -%}}\n"
        "{%- set ift_state.text = ift_chunks[0] -%}\n"
        "{%- for chunk in ift_chunks[1:] -%}\n"
        f"{{%- set ift_pair = chunk.split({e}, 1) -%}}\n"
        "{%- if ift_pair[0] -%}{%- if not ift_state.trained -%}{%- set ift_state.cut = ift_state.text | length -%}"
        "{%- endif -%}{%- set ift_state.text = ift_state.text + ift_pair[0] -%}{%- set ift_state.trained = true -%}"
        "{%- endif -%}\n"
        "{%- if ift_pair | length > 1 and ift_pair[1] -%}{%- set ift_state.text = ift_state.text + ift_pair[1] -%}"
        "{%- set ift_state.trained = false -%}{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if ift_prompt and ift_state.cut >= 0 -%}{%- set ift_out = ift_state.text[:ift_state.cut] -%}"
        "{%- else -%}{%- set ift_out = ift_state.text -%}{%- endif -%}\n"
        f"{prefix}{{{{- ift_out -}}}}"
    )


def chat_template_for(renderer: Any, tokenizer: Any, *, bos_prefix: bool = False) -> ChatTemplateExport:
    """The chat template that reproduces ``renderer``'s prompts with ``tokenizer`` (the run's, bound to it).

    ``bos_prefix``: the model adapter puts the tokenizer's BOS before a text that does not start with it (the
    tokenizer adds one itself); the chat template then writes it, since chat pipelines tokenize without
    special tokens."""
    name = getattr(renderer, "name", type(renderer).__name__)
    if name == "chat":
        template = getattr(tokenizer, "chat_template", None)
        return ChatTemplateExport(
            template if isinstance(template, str) else None, "the model's own chat template (template.name = 'chat')"
        )
    own = getattr(renderer, "chat_template", None)
    if callable(own):  # a plugin renderer that knows its chat-template form
        template = own(tokenizer)
        return ChatTemplateExport(
            template,
            f"renderer {name!r}'s chat_template()" if template else f"renderer {name!r} has no chat-template form",
        )
    if not hasattr(renderer, "source_text") or not hasattr(renderer, "template"):
        return ChatTemplateExport(
            None,
            f"renderer {name!r} is not a Jinja2 text template and has no "
            "chat_template() method, so no chat template can be saved",
        )
    why = _unsupported(renderer)
    if why is not None:
        return ChatTemplateExport(
            None, f"template {getattr(renderer, 'origin', name)} cannot be a chat template: {why}"
        )
    body = _rewrite_source(renderer.source_text, renderer.template.environment)
    template = _wrap(body, renderer.eos_token, renderer.bos_token, bos_prefix)
    return ChatTemplateExport(template, f"generated from {getattr(renderer, 'origin', name)}")


def probe_conversations() -> list[list[ift.Message]]:
    """Conversations ending with an assistant answer, to compare a chat template with ift's renderer."""
    m = ift.Message
    odd = "  {{ not jinja }} {% neither %}\n\ttabs, trailing spaces  \n\nüñí 中文 <b>&'\"\\"
    return [
        [m("user", "Hi"), m("assistant", "Hello.")],
        [m("system", "You are terse."), m("user", "2+2?"), m("assistant", "4")],
        [m("user", odd), m("assistant", odd)],
        [m("user", "first\n"), m("assistant", "one\n"), m("user", "second"), m("assistant", "two")],
        [m("system", "S\n\n"), m("user", "a"), m("assistant", "b"), m("user", "c"), m("assistant", " d ")],
        [m("user", ""), m("assistant", "x")],
    ]


def verify_chat_template(
    template: str, tokenizer: Any, renderer: Any, conversations: Sequence[Sequence[ift.Message]], *, bos: str = ""
) -> str | None:
    """The first difference between ``tokenizer.apply_chat_template`` with ``template`` and ift's own
    rendering (the prompt of ``ift generate`` and the training text), or None when they all agree.
    ``bos`` is the text the adapter puts in front of each (empty when it adds none). Conversations ift itself
    cannot render are skipped."""
    from ift.builtin_plugins.inference.runs import conversation_prompt

    for messages in conversations:
        if not messages or messages[-1].role != "assistant":
            continue
        record = ift.InstructionRecord("probe", "probe", list(messages))
        try:
            trained = "".join(s.text for s in renderer.render(record))
            prompt = conversation_prompt(renderer, messages[:-1])
        except ift.IftError:
            continue
        want = [
            (bos + prompt if bos and not prompt.startswith(bos) else prompt, True, messages[:-1]),
            (bos + trained if bos and not trained.startswith(bos) else trained, False, messages),
        ]
        for expected, generation, turns in want:
            try:
                got = tokenizer.apply_chat_template(
                    [t.to_dict() for t in turns],
                    chat_template=template,
                    tokenize=False,
                    add_generation_prompt=generation,
                )
            except Exception as exc:  # noqa: BLE001 - any failure of the exported template is a mismatch
                return f"apply_chat_template failed: {type(exc).__name__}: {exc}"
            if got != expected:
                what = "prompt" if generation else "training text"
                return f"the {what} differs: ift {expected[:120]!r} vs chat template {got[:120]!r}"
    return None
