"""Builtin renderers: Jinja2 text templates (``alpaca``, ``chatml``, ``plain``, a user file as ``jinja``)
and the model's own chat template (``chat``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from pydantic import Field

import ift
from ift.templating import (
    RenderBudgetExceeded,
    contains_sentinel,
    merge_segments,
    sandboxed_environment,
    split_segments,
    time_budget,
)


class RenderError(ift.DataError):
    """A record could not be rendered."""


class JinjaConfig(ift.ComponentConfig):
    max_seconds: float = Field(2.0, ge=0, description="Time budget for rendering one record (0: none).")
    max_chars: int = Field(1_000_000, gt=0, description="Largest rendered text for one record.")


class JinjaFileConfig(JinjaConfig):
    path: str = Field(description="Jinja2 template file, relative to the recipe's folder.")


class JinjaRenderer(ift.Renderer):
    """Renders a sandboxed Jinja2 template. Variables: ``messages`` (role/content dicts), ``record``
    (id, source, task, label, choices, metadata), ``eos_token``, ``bos_token``. Wrap the text the model
    learns in ``{% generation %}...{% endgeneration %}``."""

    Config = JinjaConfig
    builtin_file: ClassVar[str] = ""

    def __init__(self, config: ift.ComponentConfig, *, base_dir: Path,
                 prepare_jinja_env: Callable[[Any], None] | None = None) -> None:
        super().__init__(config, base_dir=base_dir, prepare_jinja_env=prepare_jinja_env)
        self.source_text, self.origin = self._read()
        env = sandboxed_environment(prepare_jinja_env)
        try:
            with time_budget(config.max_seconds):  # type: ignore[attr-defined]
                self.template = env.from_string(self.source_text)
        except TemplateSyntaxError as exc:
            raise ift.RecipeError([ift.Problem("template", f"{self.origin}:{exc.lineno}: {exc.message}")]) \
                from None
        except (RenderBudgetExceeded, RecursionError, MemoryError) as exc:
            what = "nests too deeply" if isinstance(exc, RecursionError) else f"cannot be compiled: {exc}"
            raise ift.RecipeError([ift.Problem("template", f"{self.origin}: {what} (template.max_seconds)")]) \
                from None
        self.eos_token = ""
        self.bos_token = ""

    def _read(self) -> tuple[str, str]:
        text = resources.files("ift.builtin_plugins").joinpath(f"templates/{self.builtin_file}").read_text("utf-8")
        return text, f"builtin template {self.name!r}"

    def bind(self, tokenizer: Any) -> None:
        self.eos_token = getattr(tokenizer, "eos_token", None) or ""
        self.bos_token = getattr(tokenizer, "bos_token", None) or ""

    def render(self, record: ift.InstructionRecord) -> list[ift.Segment]:
        for message in record.messages:
            if contains_sentinel(message.content):
                raise RenderError(f"record {record.id!r} contains reserved characters U+E000/U+E001")
        cfg = self.config
        try:
            with time_budget(cfg.max_seconds):  # type: ignore[attr-defined]
                text = self.template.render(
                    messages=[m.to_dict() for m in record.messages],
                    record={"id": record.id, "source": record.source, "task": record.task,
                            "label": record.label, "choices": record.choices, "metadata": record.metadata},
                    eos_token=self.eos_token, bos_token=self.bos_token)
            if len(text) > cfg.max_chars:  # type: ignore[attr-defined]
                raise RenderBudgetExceeded(f"rendered {len(text):,} characters, more than max_chars = "
                                           f"{cfg.max_chars:,}")  # type: ignore[attr-defined]
            segments = split_segments(text)
        except SecurityError as exc:
            raise RenderError(f"{self.origin}: refused by the template sandbox (security) while rendering record "
                              f"{record.id!r}: {exc}") from None
        except RenderBudgetExceeded as exc:
            raise RenderError(f"{self.origin}: record {record.id!r}: {exc} (template.max_seconds / "
                              "template.max_chars)") from None
        except RecursionError:
            raise RenderError(f"{self.origin}: record {record.id!r}: the template recurses without bound (a macro "
                              "or include that calls itself)") from None
        except MemoryError:
            raise RenderError(f"{self.origin}: record {record.id!r}: rendering ran out of memory (template."
                              "max_chars)") from None
        except (TemplateError, ValueError) as exc:
            raise RenderError(f"{self.origin}: cannot render record {record.id!r} "
                              f"(source {record.source!r}): {exc}") from None
        if not any(s.trainable for s in segments):
            raise RenderError(f"{self.origin}: record {record.id!r} rendered with no trainable text; "
                              "wrap the answer in {% generation %}...{% endgeneration %}")
        return segments

    def template_hash(self) -> str:
        return "sha256:" + hashlib.sha256(self.source_text.encode()).hexdigest()[:16]


class AlpacaRenderer(JinjaRenderer):
    """``### Instruction:`` / ``### Response:`` blocks; the answer and EOS are trained."""

    name = "alpaca"
    builtin_file = "alpaca.jinja"


class ChatMLRenderer(JinjaRenderer):
    """``<|im_start|>role ... <|im_end|>`` turns; assistant content and ``<|im_end|>`` are trained."""

    name = "chatml"
    builtin_file = "chatml.jinja"


class PlainRenderer(JinjaRenderer):
    """Each turn on its own line; answers end with EOS."""

    name = "plain"
    builtin_file = "plain.jinja"


class JinjaFileRenderer(JinjaRenderer):
    """A user template file: ``[template] path = "my.jinja"``."""

    name = "jinja"
    Config = JinjaFileConfig

    def _read(self) -> tuple[str, str]:
        assert isinstance(self.config, JinjaFileConfig)
        path = Path(self.config.path).expanduser()
        path = path if path.is_absolute() else self.base_dir / path
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ift.RecipeError([ift.Problem("template.path", f"cannot read {path}: {exc.strerror}")]) \
                from None


class ChatTemplateRenderer(ift.Renderer):
    """The tokenizer's own ``chat_template``. The full text equals ``tokenizer.apply_chat_template``;
    each assistant turn (with its end-of-turn text) is trainable."""

    name = "chat"
    tokenizer: Any = None

    def bind(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ift.RecipeError([ift.Problem(
                "template.name", "'chat' uses the tokenizer's chat_template, but this tokenizer has none; "
                "use a text template such as 'chatml' or 'alpaca'")])
        self.tokenizer = tokenizer

    def _apply(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=generation_prompt)

    def render(self, record: ift.InstructionRecord) -> list[ift.Segment]:
        if self.tokenizer is None:
            raise RuntimeError("ChatTemplateRenderer.bind(tokenizer) must be called before render()")
        messages = [m.to_dict() for m in record.messages]
        try:
            full = self._apply(messages, False)
            segments: list[ift.Segment] = []
            pos = 0
            for i, message in enumerate(messages):
                if message["role"] != "assistant" or i == 0:
                    continue
                before = self._apply(messages[:i], True)
                upto = self._apply(messages[: i + 1], False)
                if not (full.startswith(upto) and upto.startswith(before) and len(before) >= pos):
                    raise RenderError(
                        f"the chat template is not prefix-stable at turn {i} of record {record.id!r} "
                        "(rendering fewer turns does not give a prefix of the full text), so trainable "
                        "spans cannot be located exactly; use a text template instead")
                answer = upto[len(before):]
                trained = answer.rstrip("\n ")
                segments.append(ift.Segment(full[pos:len(before)], False))
                segments.append(ift.Segment(trained, True))
                pos = len(before) + len(trained)
            segments.append(ift.Segment(full[pos:], False))
        except TemplateError as exc:
            raise RenderError(f"chat template: cannot render record {record.id!r}: {exc}") from None
        return merge_segments(segments)

    def prompt(self, record: ift.InstructionRecord) -> str:
        messages = [m.to_dict() for m in record.messages]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return self._apply(messages[:last], True)

    def template_hash(self) -> str:
        text = getattr(self.tokenizer, "chat_template", "") or ""
        return "sha256:" + hashlib.sha256(str(text).encode()).hexdigest()[:16]


@ift.hookimpl
def ift_register_renderers() -> list[type]:
    return [AlpacaRenderer, ChatMLRenderer, PlainRenderer, JinjaFileRenderer, ChatTemplateRenderer]
