"""Builtin renderers: Jinja2 text templates (``alpaca``, ``chatml``, ``plain``, a user file as ``jinja``)
and the model's own chat template (``chat``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.exceptions import SecurityError
from pydantic import Field

import ift
from ift.builtin_plugins.chat_spans import (
    SpanError,
    contains_marks,
    first_difference,
    render_marked,
    without_whitespace,
)
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


class TemplateConfig(ift.ComponentConfig):
    train_on: Literal["all_assistant", "last_assistant"] = Field(
        "all_assistant",
        description='Which assistant turns are trained: every one (turns marked "train": false '
        "excepted) or only the last.",
    )


def choose_trained(
    segments: list[ift.Segment], record: ift.InstructionRecord, train_on: str, origin: str
) -> list[ift.Segment]:
    """Apply ``train_on`` and per-message ``"train": false`` to a text template's segments: its k-th trainable
    segment belongs to the k-th assistant turn."""
    assistants = [m for m in record.messages if m.role == "assistant"]
    positions = [i for i, s in enumerate(segments) if s.trainable]
    keep = set(positions)
    if any(m.train is False for m in assistants):
        if len(positions) != len(assistants):
            raise RenderError(
                f'{origin}: record {record.id!r} marks an assistant turn "train": false, but the '
                f"template has {len(positions)} {{% generation %}} block(s) for {len(assistants)} "
                "assistant turn(s), so they cannot be matched"
            )
        keep = {i for i, m in zip(positions, assistants, strict=True) if m.train is not False}
    if train_on == "last_assistant":
        keep = {max(keep)} if keep else set()
    return merge_segments([ift.Segment(s.text, s.trainable and i in keep) for i, s in enumerate(segments)])


class JinjaConfig(TemplateConfig):
    max_seconds: float = Field(2.0, ge=0, description="Time budget for rendering one record (0: none).")
    max_chars: int = Field(1_000_000, gt=0, description="Largest rendered text for one record.")


class JinjaFileConfig(JinjaConfig):
    path: str = Field(description="Jinja2 template file, relative to the recipe's folder.")


class JinjaRenderer(ift.Renderer):
    """Renders a sandboxed Jinja2 template. Variables: ``messages`` (role/content dicts), ``record``
    (id, source, task, label, choices, metadata), ``eos_token``, ``bos_token``. Wrap the text the model
    learns in ``{% generation %}...{% endgeneration %}``."""

    Config: ClassVar[type[ift.ComponentConfig]] = JinjaConfig
    builtin_file: ClassVar[str] = ""

    def __init__(
        self, config: ift.ComponentConfig, *, base_dir: Path, prepare_jinja_env: Callable[[Any], None] | None = None
    ) -> None:
        super().__init__(config, base_dir=base_dir, prepare_jinja_env=prepare_jinja_env)
        self.source_text, self.origin = self._read()
        env = sandboxed_environment(prepare_jinja_env)
        try:
            with time_budget(config.max_seconds):  # type: ignore[attr-defined]
                self.template = env.from_string(self.source_text)
        except TemplateSyntaxError as exc:
            raise ift.RecipeError([ift.Problem("template", f"{self.origin}:{exc.lineno}: {exc.message}")]) from None
        except (RenderBudgetExceeded, RecursionError, MemoryError) as exc:
            what = "nests too deeply" if isinstance(exc, RecursionError) else f"cannot be compiled: {exc}"
            raise ift.RecipeError([ift.Problem("template", f"{self.origin}: {what} (template.max_seconds)")]) from None
        self.eos_token = ""
        self.bos_token = ""

    def _read(self) -> tuple[str, str]:
        folder = resources.files("ift.builtin_plugins").joinpath("templates")
        text = folder.joinpath(self.builtin_file).read_text("utf-8")
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
                    record={
                        "id": record.id,
                        "source": record.source,
                        "task": record.task,
                        "label": record.label,
                        "choices": record.choices,
                        "metadata": record.metadata,
                    },
                    eos_token=self.eos_token,
                    bos_token=self.bos_token,
                )
            if len(text) > cfg.max_chars:  # type: ignore[attr-defined]
                raise RenderBudgetExceeded(
                    f"rendered {len(text):,} characters, more than max_chars = {cfg.max_chars:,}"  # type: ignore[attr-defined]
                )
            segments = split_segments(text)
        except SecurityError as exc:
            raise RenderError(
                f"{self.origin}: refused by the template sandbox (security) while rendering record {record.id!r}: {exc}"
            ) from None
        except RenderBudgetExceeded as exc:
            raise RenderError(
                f"{self.origin}: record {record.id!r}: {exc} (template.max_seconds / template.max_chars)"
            ) from None
        except RecursionError:
            raise RenderError(
                f"{self.origin}: record {record.id!r}: the template recurses without bound (a macro "
                "or include that calls itself)"
            ) from None
        except MemoryError:
            raise RenderError(
                f"{self.origin}: record {record.id!r}: rendering ran out of memory (template.max_chars)"
            ) from None
        except (TemplateError, ValueError) as exc:
            raise RenderError(
                f"{self.origin}: cannot render record {record.id!r} (source {record.source!r}): {exc}"
            ) from None
        if not any(s.trainable for s in segments):
            raise RenderError(
                f"{self.origin}: record {record.id!r} rendered with no trainable text; "
                "wrap the answer in {% generation %}...{% endgeneration %}"
            )
        segments = choose_trained(segments, record, cfg.train_on, self.origin)  # type: ignore[attr-defined]
        if not any(s.trainable for s in segments):
            raise RenderError(f"{self.origin}: record {record.id!r} has no assistant turn left to train")
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
            raise ift.RecipeError([ift.Problem("template.path", f"cannot read {path}: {exc.strerror}")]) from None


class ChatTemplateRenderer(ift.Renderer):
    """The tokenizer's own ``chat_template``. The text equals ``tokenizer.apply_chat_template`` (except the one
    documented case below); each trained assistant turn's content and its end-of-turn text are trainable.

    Spans are found by rendering with markers around each message's content (:mod:`chat_spans`). The end-of-turn
    text of an answer is what the template writes after it when it ends the conversation, as far as the full
    rendering writes the same (``<|im_end|>``, ``<|eot_id|>``, ``</s>``; trailing whitespace is left untrained).
    A template that writes nothing after an answer would never teach the model to stop: the tokenizer's EOS is then
    inserted after every assistant answer (trained where the answer is) and :meth:`notices` says so; generation
    stops on EOS. Uses ``TRL``-style ``{% generation %}`` blocks instead when the template has them.
    """

    name = "chat"
    Config = TemplateConfig
    tokenizer: Any = None

    def __init__(
        self, config: ift.ComponentConfig, *, base_dir: Path, prepare_jinja_env: Callable[[Any], None] | None = None
    ) -> None:
        super().__init__(config, base_dir=base_dir, prepare_jinja_env=prepare_jinja_env)
        self._notices: dict[str, None] = {}

    def bind(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ift.RecipeError(
                [
                    ift.Problem(
                        "template.name",
                        "'chat' uses the tokenizer's chat_template, but this tokenizer has none; "
                        "use a text template such as 'chatml' or 'alpaca'",
                    )
                ]
            )
        self.tokenizer = tokenizer
        template = str(tokenizer.chat_template)
        self.has_generation_blocks = bool(re.search(r"{%-?\s*generation\s*-?%}", template))

    @property
    def train_on(self) -> str:
        return str(getattr(self.config, "train_on", "all_assistant"))

    def notices(self) -> list[str]:
        return list(self._notices)

    def _notice(self, text: str) -> None:
        self._notices.setdefault(text, None)

    def _apply(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        )

    def _trained(self, record: ift.InstructionRecord) -> set[int]:
        trained = {j for j, m in enumerate(record.messages) if m.trained}
        if self.train_on == "last_assistant":
            trained = {max(trained)} if trained else set()
        return trained

    def render(self, record: ift.InstructionRecord) -> list[ift.Segment]:
        return self._build(record)[0]

    def _build(self, record: ift.InstructionRecord) -> tuple[list[ift.Segment], dict[int, int]]:
        """Segments, and where each assistant content starts in their text."""
        if self.tokenizer is None:
            raise RuntimeError("ChatTemplateRenderer.bind(tokenizer) must be called before render()")
        for message in record.messages:
            if contains_marks(message.content) or contains_sentinel(message.content):
                raise RenderError(
                    f"record {record.id!r} contains reserved private-use characters (U+E000/U+E001 or plane 15)"
                )
        messages = [m.to_dict() for m in record.messages]
        trained = self._trained(record)
        try:
            if self.has_generation_blocks:
                return self._from_generation_blocks(record, messages), {}
            return self._from_marks(record, messages, trained)
        except SpanError as exc:
            raise RenderError(f"chat template: record {record.id!r}: {exc}") from None
        except TemplateError as exc:
            raise RenderError(
                f"the chat template refuses record {record.id!r} (source {record.source!r}): {exc}"
            ) from None

    def _from_generation_blocks(
        self, record: ift.InstructionRecord, messages: list[dict[str, Any]]
    ) -> list[ift.Segment]:
        from ift.templating import GEN_START

        env = sandboxed_environment(self.prepare_jinja_env)
        env.globals["raise_exception"] = _raise_template_error
        template = env.from_string(str(self.tokenizer.chat_template))
        special = dict(getattr(self.tokenizer, "special_tokens_map", {}) or {})
        text = template.render(messages=messages, add_generation_prompt=False, **special)
        if GEN_START not in text:
            raise RenderError(f"chat template: record {record.id!r} rendered no {{% generation %}} block")
        return choose_trained(split_segments(text), record, self.train_on, "chat template")

    def _from_marks(
        self, record: ift.InstructionRecord, messages: list[dict[str, Any]], trained: set[int]
    ) -> tuple[list[ift.Segment], dict[int, int]]:
        real = self._apply(messages, False)
        rendered = render_marked(self._apply, messages, real=real)
        spans = rendered.spans
        eos = getattr(self.tokenizer, "eos_token", None) or ""
        segments: list[ift.Segment] = []
        starts: dict[int, int] = {}
        pos = shift = 0
        for j, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            if -1 - j in spans:
                raise SpanError(f"the template renders the content of message {j} more than once")
            prompt = None
            if j not in spans:
                if message["content"]:
                    raise SpanError(f"the template leaves out the content of assistant message {j}")
                prompt = self._apply(messages[:j], True)
                if not (real.startswith(prompt) and len(prompt) >= pos):
                    raise SpanError(
                        f"cannot place the empty assistant message {j} (its generation prompt is "
                        "not where the turn is rendered)"
                    )
                start = end = len(prompt)
            else:
                start, end = spans[j]
            if start < pos:
                raise SpanError(f"assistant message {j} is rendered before the message preceding it")
            if j in trained:
                self._check_prompt(record, messages, j, real, start, spans, prompt)
            upto = render_marked(self._apply, messages[: j + 1], style=rendered.style)
            tail = upto.text[upto.spans[j][1] if j in upto.spans else start :]
            following = [s for k, (s, _) in spans.items() if k > j]
            after = real[end : max(min(following, default=len(real)), end)]
            eot = after[: first_difference(tail, after)].rstrip()
            train = j in trained
            segments.append(ift.Segment(real[pos:start], False))
            starts[j] = start + shift
            segments.append(ift.Segment(real[start:end], train))
            segments.append(ift.Segment(eot, train))
            pos = end + len(eot)
            if not eot and eos:
                segments.append(ift.Segment(eos, train))
                shift += len(eos)
                self._notice(
                    f"the chat template writes no end-of-turn text after an assistant answer, so the "
                    f"model could not learn to stop: ift inserts the tokenizer's EOS {eos!r} after each "
                    "answer (trained with it) and generation stops on it"
                )
            elif not eot:
                self._notice(
                    "the chat template writes no end-of-turn text after an assistant answer and the "
                    "tokenizer has no EOS: the model will not learn to stop"
                )
        segments.append(ift.Segment(real[pos:], False))
        return merge_segments(segments), starts

    def _check_prompt(
        self,
        record: ift.InstructionRecord,
        messages: list[dict[str, Any]],
        j: int,
        real: str,
        start: int,
        spans: dict[int, tuple[int, int]],
        prompt: str | None,
    ) -> None:
        """The text before answer ``j`` in the full rendering against the template's own generation prompt for the
        conversation up to ``j``: earlier turns rewritten is a refusal; a different generation prompt a notice."""
        if prompt is None:
            try:
                prompt = self._apply(messages[:j], True)
            except Exception:  # noqa: BLE001 - e.g. a template that cannot render an empty conversation
                return
        before = real[:start]
        if prompt == before:
            return
        at = first_difference(prompt, before)
        earlier = max((e for k, (_, e) in spans.items() if 0 <= k < j), default=0)
        if at < earlier:
            raise SpanError(
                f"the template rewrites earlier turns when later ones follow: rendering the conversation up to "
                f"assistant message {j} gives {prompt[max(0, at - 40) : at + 40]!r} where the full conversation has "
                f"{before[max(0, at - 40) : at + 40]!r} (character {at}); what the model is trained on for that turn "
                "is not what it would be prompted with. Train only the last turn (template.train_on = "
                '"last_assistant") or use a text template'
            )
        if without_whitespace(prompt[at:]) == without_whitespace(before[at:]):
            self._notice(
                f"the template's generation prompt ends {prompt[at:][-60:]!r} but a rendered assistant "
                f"turn is preceded by {before[at:][-60:]!r} (whitespace only): ift trains and generates "
                "with the rendered turn's text"
            )
        else:
            self._notice(
                f"the template's generation prompt ends {prompt[at:][-60:]!r} but a rendered assistant "
                f"turn is preceded by {before[at:][-60:]!r}: ift trains and generates with the rendered "
                "turn's text; tools that use add_generation_prompt=True prompt the model differently"
            )

    def prompt(self, record: ift.InstructionRecord) -> str:
        """The text the model continues to produce the last assistant answer, exactly as training rendered it."""
        last = max((j for j, m in enumerate(record.messages) if m.role == "assistant"), default=None)
        if last is None:
            raise RenderError(
                f"record {record.id!r} has no assistant turn: a prompt is the text before the last "
                "assistant answer (to prompt for a new answer, end the messages with an assistant "
                "message whose content is empty)"
            )
        if self.has_generation_blocks:
            return super().prompt(record)
        probe = ift.InstructionRecord(
            record.id,
            record.source,
            [*record.messages[:last], ift.Message("assistant", record.messages[last].content, train=True)],
            task=record.task,
        )
        segments, starts = self._build(probe)
        return "".join(s.text for s in segments)[: starts[last]]

    def template_hash(self) -> str:
        text = getattr(self.tokenizer, "chat_template", "") or ""
        return "sha256:" + hashlib.sha256(str(text).encode()).hexdigest()[:16]


def _raise_template_error(message: str) -> None:
    raise TemplateError(message)


@ift.hookimpl
def ift_register_renderers() -> list[type]:
    return [AlpacaRenderer, ChatMLRenderer, PlainRenderer, JinjaFileRenderer, ChatTemplateRenderer]
