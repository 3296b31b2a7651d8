"""Renderers decide what is trained: builtin text templates, user Jinja files in a sandbox, and the
tokenizer's own chat template (identical to ``apply_chat_template``, assistant turns trainable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ift
from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer
from ift.builtin_plugins.renderers import (
    AlpacaRenderer,
    ChatMLRenderer,
    ChatTemplateRenderer,
    JinjaFileRenderer,
    PlainRenderer,
    RenderError,
)
from ift.host import PluginHost
from ift.records import InstructionRecord, Message
from ift.templating import GEN_START

Seg = ift.Segment
EOS = "<|endoftext|>"

SINGLE = InstructionRecord("r1", "src", [Message("user", "Add 2 and 2."), Message("assistant", "4")])
CONVERSATION = InstructionRecord(
    "conv-1",
    "src",
    [
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
        Message("user", "Bye"),
        Message("assistant", "See you"),
    ],
)


def text_renderer(cls: type[ift.Renderer], tokenizer: Any = None, **kwargs: Any) -> ift.Renderer:
    renderer = cls(cls.Config(), base_dir=Path("."), **kwargs)
    if tokenizer is not None:
        renderer.bind(tokenizer)
    return renderer


def file_renderer(folder: Path, template: str, **kwargs: Any) -> JinjaFileRenderer:
    (folder / "t.jinja").write_text(template)
    return JinjaFileRenderer(JinjaFileRenderer.Config(path="t.jinja"), base_dir=folder, **kwargs)


def trainable(segments: list[ift.Segment]) -> list[str]:
    return [s.text for s in segments if s.trainable]


# --- builtin text templates --------------------------------------------------------------------


def test_alpaca(tokenizer: Any) -> None:
    renderer = text_renderer(AlpacaRenderer, tokenizer)
    assert renderer.render(SINGLE) == [
        Seg("### Instruction:\nAdd 2 and 2.\n\n### Response:\n", False),
        Seg(f"4{EOS}", True),
        Seg("\n\n", False),
    ]
    assert renderer.prompt(SINGLE) == "### Instruction:\nAdd 2 and 2.\n\n### Response:\n"


def test_chatml(tokenizer: Any) -> None:
    renderer = text_renderer(ChatMLRenderer, tokenizer)
    assert renderer.render(SINGLE) == [
        Seg("<|im_start|>user\nAdd 2 and 2.<|im_end|>\n<|im_start|>assistant\n", False),
        Seg("4<|im_end|>", True),
        Seg("\n", False),
    ]
    assert renderer.prompt(SINGLE) == "<|im_start|>user\nAdd 2 and 2.<|im_end|>\n<|im_start|>assistant\n"


def test_plain(tokenizer: Any) -> None:
    renderer = text_renderer(PlainRenderer, tokenizer)
    assert renderer.render(SINGLE) == [Seg("Add 2 and 2.\n", False), Seg(f"4{EOS}", True), Seg("\n", False)]


@pytest.mark.parametrize(
    ("cls", "end"),
    [(AlpacaRenderer, EOS), (ChatMLRenderer, "<|im_end|>"), (PlainRenderer, EOS)],
)
def test_every_assistant_turn_and_only_it_is_trainable(tokenizer: Any, cls: type[ift.Renderer], end: str) -> None:
    segments = text_renderer(cls, tokenizer).render(CONVERSATION)
    assert trainable(segments) == [f"Hello{end}", f"See you{end}"]
    untrained = "".join(s.text for s in segments if not s.trainable)
    for text in ("Be brief.", "Hi", "Bye"):
        assert text in untrained
    assert "Hello" not in untrained and "See you" not in untrained


def test_alpaca_conversation_text(tokenizer: Any) -> None:
    segments = text_renderer(AlpacaRenderer, tokenizer).render(CONVERSATION)
    assert "".join(s.text for s in segments) == (
        "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello<|endoftext|>\n\n"
        "### Instruction:\nBye\n\n### Response:\nSee you<|endoftext|>\n\n"
    )


def test_prompt_is_everything_before_the_last_answer(tokenizer: Any) -> None:
    renderer = text_renderer(ChatMLRenderer, tokenizer)
    assert renderer.prompt(CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "Hello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_hash_identifies_the_template() -> None:
    alpaca = text_renderer(AlpacaRenderer).template_hash()
    assert alpaca.startswith("sha256:") and len(alpaca) == len("sha256:") + 16
    assert alpaca == text_renderer(AlpacaRenderer).template_hash()
    assert alpaca != text_renderer(ChatMLRenderer).template_hash()


def test_content_with_reserved_sentinels_is_rejected(tokenizer: Any) -> None:
    record = InstructionRecord("evil", "src", [Message("user", f"x{GEN_START}"), Message("assistant", "y")])
    with pytest.raises(RenderError) as info:
        text_renderer(ChatMLRenderer, tokenizer).render(record)
    assert str(info.value) == "record 'evil' contains reserved characters U+E000/U+E001"


# --- user Jinja files --------------------------------------------------------------------------


def test_user_template_gets_record_and_special_tokens(tmp_path: Path, tokenizer: Any) -> None:
    renderer = file_renderer(
        tmp_path,
        "[{{ record.id }}|{{ record.source }}] {{ messages[0].content }} => "
        "{% generation %}{{ messages[-1].content }}{{ eos_token }}"
        "{% endgeneration %}",
    )
    renderer.bind(tokenizer)
    assert renderer.render(SINGLE) == [Seg("[r1|src] Add 2 and 2. => ", False), Seg(f"4{EOS}", True)]


def test_undefined_variable_is_a_data_error_naming_the_record(tmp_path: Path) -> None:
    renderer = file_renderer(tmp_path, "{{ instruction }}{% generation %}{{ messages[-1].content }}{% endgeneration %}")
    with pytest.raises(ift.DataError) as info:
        renderer.render(SINGLE)
    assert (
        str(info.value) == f"{tmp_path / 't.jinja'}: cannot render record 'r1' (source 'src'): "
        "'instruction' is undefined"
    )


@pytest.mark.parametrize(
    ("expression", "blocked"),
    [
        ("''.__class__", "access to attribute '__class__' of 'str' object is unsafe"),
        ("''.__class__.__mro__[1].__subclasses__()", "access to attribute '__class__' of 'str' object is unsafe"),
        ("messages.append(1)", "access to attribute 'append' of 'list' object is unsafe"),
        ("record.metadata.update(x=1)", "access to attribute 'update' of 'dict' object is unsafe"),
    ],
)
def test_sandbox_blocks_unsafe_access(tmp_path: Path, expression: str, blocked: str) -> None:
    renderer = file_renderer(tmp_path, "{{ " + expression + " }}{% generation %}x{% endgeneration %}")
    with pytest.raises(ift.DataError) as info:
        renderer.render(SINGLE)
    assert blocked in str(info.value)
    assert "'r1'" in str(info.value)
    assert "refused by the template sandbox (security)" in str(info.value)


def test_render_budget_stops_runaway_templates(tmp_path: Path) -> None:
    slow = file_renderer(
        tmp_path,
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
        "{% endfor %}{% generation %}x{% endgeneration %}",
    )
    slow.config = slow.Config(path=slow.config.path, max_seconds=0.2)
    with pytest.raises(RenderError, match=r"record 'r1': rendering took longer than 0.2 s"):
        slow.render(SINGLE)
    big = file_renderer(
        tmp_path, "{% for a in range(20000) %}xxxxxxxxxx{% endfor %}{% generation %}x{% endgeneration %}"
    )
    with pytest.raises(RenderError, match=r"rendered 200,00[0-9] characters, more than max_chars = 100,000"):
        big.config = big.Config(path=big.config.path, max_chars=100_000)
        big.render(SINGLE)


def test_template_without_generation_block_is_an_error(tmp_path: Path) -> None:
    renderer = file_renderer(tmp_path, "{{ messages[0].content }}")
    with pytest.raises(
        RenderError,
        match=r"record 'r1' rendered with no trainable text; wrap the answer in "
        r"\{% generation %\}",
    ):
        renderer.render(SINGLE)


def test_template_syntax_error_is_a_recipe_error_with_the_line(tmp_path: Path) -> None:
    with pytest.raises(ift.RecipeError) as info:
        file_renderer(tmp_path, "line one\n{% if %}\n")
    assert info.value.problems[0].key == "template"
    assert info.value.problems[0].message.startswith(f"{tmp_path / 't.jinja'}:2: ")


def test_missing_template_file(tmp_path: Path) -> None:
    with pytest.raises(ift.RecipeError) as info:
        JinjaFileRenderer(JinjaFileRenderer.Config(path="absent.jinja"), base_dir=tmp_path)
    assert (
        str(info.value) == f"invalid recipe: template.path: cannot read {tmp_path / 'absent.jinja'}: "
        "No such file or directory"
    )


def test_plugins_prepare_the_jinja_environment(tmp_path: Path, host: PluginHost) -> None:
    class ShoutPlugin:
        @ift.hookimpl
        def ift_prepare_jinja_env(self, env: Any) -> None:
            env.filters["shout"] = lambda s: s.upper()

    host.register(ShoutPlugin(), "shout")
    renderer = file_renderer(
        tmp_path,
        "{{ messages[0].content | shout }} {% generation %}ok{% endgeneration %}",
        prepare_jinja_env=host.prepare_jinja_env,
    )
    assert renderer.render(SINGLE) == [Seg("ADD 2 AND 2. ", False), Seg("ok", True)]


# --- the tokenizer's chat template -------------------------------------------------------------


def test_chat_renders_exactly_apply_chat_template(tokenizer: Any) -> None:
    renderer = text_renderer(ChatTemplateRenderer, tokenizer)
    segments = renderer.render(CONVERSATION)
    expected = tokenizer.apply_chat_template([m.to_dict() for m in CONVERSATION.messages], tokenize=False)
    assert "".join(s.text for s in segments) == expected
    assert segments == [
        Seg("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        Seg("Hello<|im_end|>", True),
        Seg("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", False),
        Seg("See you<|im_end|>", True),
        Seg("\n", False),
    ]


def test_chat_prompt_uses_the_generation_prompt(tokenizer: Any) -> None:
    renderer = text_renderer(ChatTemplateRenderer, tokenizer)
    messages = [m.to_dict() for m in CONVERSATION.messages[:-1]]
    assert renderer.prompt(CONVERSATION) == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert renderer.prompt(CONVERSATION).endswith("Bye<|im_end|>\n<|im_start|>assistant\n")


def test_chat_needs_a_bound_tokenizer_with_a_chat_template() -> None:
    renderer = ChatTemplateRenderer(ift.ComponentConfig(), base_dir=Path("."))
    with pytest.raises(RuntimeError, match=r"bind\(tokenizer\) must be called before render"):
        renderer.render(SINGLE)
    no_template = build_byte_tokenizer()
    no_template.chat_template = None
    with pytest.raises(ift.RecipeError) as info:
        renderer.bind(no_template)
    assert info.value.problems[0].key == "template.name"


def test_chat_template_that_is_not_prefix_stable_is_refused() -> None:
    tokenizer = build_byte_tokenizer()
    tokenizer.chat_template = (
        "{{ messages | length }} turns\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    )
    renderer = text_renderer(ChatTemplateRenderer, tokenizer)
    with pytest.raises(
        RenderError,
        match=r"record 'r1': the template rewrites earlier turns when later ones "
        r"follow: .*'1 turns\\n",
    ):
        renderer.render(SINGLE)


def test_chat_template_hash_follows_the_tokenizer(tokenizer: Any) -> None:
    other = build_byte_tokenizer()
    other.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    first = text_renderer(ChatTemplateRenderer, tokenizer).template_hash()
    assert first == text_renderer(ChatTemplateRenderer, tokenizer).template_hash()
    assert first != text_renderer(ChatTemplateRenderer, other).template_hash()
