"""The contract of template renderers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ift.components import Renderer, Segment
from ift.records import InstructionRecord
from ift.testing.contracts.base import ComponentContract
from ift.testing.samples import sample_records


class RendererContract(ComponentContract):
    """A renderer turns every record into segments whose texts concatenate to the training text, marks at
    least one segment (holding the final answer) trainable, gives a ``prompt()`` that is a prefix of the text
    ending before the last trainable segment and containing the question, renders deterministically, and
    has a stable ``template_hash()``.

    Set ``component``, ``config`` (and ``files``, for a template file); ``records`` defaults to
    :func:`ift.testing.sample_records` (single turn, system prompt, multi-turn, labelled). ``expected_text``
    maps record ids to the exact text. The renderer is bound to the byte-level tokenizer unless
    :meth:`tokenizer` is overridden."""

    kind = "renderer"
    records: ClassVar[list[InstructionRecord] | None] = None
    expected_text: ClassVar[dict[str, str]] = {}

    def tokenizer(self) -> Any:
        from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

        return build_byte_tokenizer()

    def input_records(self) -> list[InstructionRecord]:
        return list(self.records if self.records is not None else sample_records())

    def make_renderer(self, base_dir: Path, host: Any) -> Renderer:
        cls = self.component_class()
        renderer = cls(
            self.make_config(base_dir),
            base_dir=base_dir,  # type: ignore[call-arg]
            prepare_jinja_env=host.prepare_jinja_env,
        )
        renderer.bind(self.tokenizer())
        return renderer

    def test_segments_concatenate_to_the_text(self, base_dir: Path, ift_host: Any) -> None:
        renderer = self.make_renderer(base_dir, ift_host)
        for record in self.input_records():
            segments = renderer.render(record)
            assert isinstance(segments, list) and segments, f"record {record.id!r}: render() returned no segments"
            for s in segments:
                assert isinstance(s, Segment) and isinstance(s.text, str) and isinstance(s.trainable, bool), (
                    f"record {record.id!r}: {s!r} is not an ift.Segment(text: str, trainable: bool)"
                )
            text = "".join(s.text for s in segments)
            assert renderer.render(record) == segments, f"record {record.id!r}: rendering twice differs"
            if record.id in self.expected_text:
                assert text == self.expected_text[record.id]

    def test_the_answer_is_trainable(self, base_dir: Path, ift_host: Any) -> None:
        renderer = self.make_renderer(base_dir, ift_host)
        for record in self.input_records():
            segments = renderer.render(record)
            trained = [s.text for s in segments if s.trainable]
            assert trained, f"record {record.id!r}: no trainable segment, so nothing would be learned"
            assert any(record.answer in t for t in trained), (
                f"record {record.id!r}: the answer {record.answer!r} is not inside a trainable segment"
            )

    def test_prompt_is_a_prefix_of_the_text(self, base_dir: Path, ift_host: Any) -> None:
        renderer = self.make_renderer(base_dir, ift_host)
        for record in self.input_records():
            segments = renderer.render(record)
            text = "".join(s.text for s in segments)
            prompt = renderer.prompt(record)
            assert isinstance(prompt, str) and text.startswith(prompt), (
                f"record {record.id!r}: prompt() {prompt!r} is not a prefix of the rendered text {text!r}"
            )
            last = max(i for i, s in enumerate(segments) if s.trainable)
            start = sum(len(s.text) for s in segments[:last])
            assert len(prompt) <= start, (
                f"record {record.id!r}: prompt() reaches into the last trainable segment (the answer to generate)"
            )
            question = [m.content for m in record.messages if m.role == "user"]
            if question:
                assert question[-1] in prompt, f"record {record.id!r}: prompt() lacks the last user turn"

    def test_template_hash_is_stable(self, base_dir: Path, ift_host: Any) -> None:
        one, two = self.make_renderer(base_dir, ift_host), self.make_renderer(base_dir, ift_host)
        value = one.template_hash()
        assert isinstance(value, str) and value, "template_hash() must be a non-empty string"
        assert value == one.template_hash() == two.template_hash(), "template_hash() is not stable"
