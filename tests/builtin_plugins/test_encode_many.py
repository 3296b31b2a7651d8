"""Batched encoding (ModelAdapter.encode_many) gives exactly the examples of encoding one record at a time."""

from __future__ import annotations

from pathlib import Path

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.token_labels import labels_from_offsets, trainable_mask


def items() -> list[tuple[ift.InstructionRecord, list[ift.Segment]]]:
    out = []
    for i in range(25):
        record = ift.InstructionRecord(f"r{i}", "s", [ift.Message("user", "q"), ift.Message("assistant", "a")])
        segments = [
            ift.Segment(f"### Q{i}: " + "é" * (i % 4) + "x" * i, False),
            ift.Segment(" answer " + "y" * (i % 6) + "<|endoftext|>", True),
        ]
        if i % 5 == 0:
            segments += [ift.Segment("\nmore prompt ", False), ift.Segment("second answer<|im_end|>", True)]
        out.append((record, segments))
    return out


def adapter() -> tuple[CausalLMAdapter, object]:
    made = CausalLMAdapter(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config={"model_type": "llama"}), base_dir=Path(".")
    )
    return made, made.load_tokenizer()


def test_batched_equals_one_at_a_time():
    causal, tokenizer = adapter()
    one = [causal.encode_record(tokenizer, record, segments) for record, segments in items()]
    assert causal.encode_many(tokenizer, items()) == one
    assert all(e.trainable_tokens > 0 for e in one)


def test_batched_equals_one_at_a_time_when_a_bos_token_is_added():
    causal, tokenizer = adapter()
    causal._adds_bos = True
    tokenizer.bos_token = "<|im_start|>"
    one = [causal.encode_record(tokenizer, record, segments) for record, segments in items()]
    assert [e.input_ids[0] for e in one] == [tokenizer.bos_token_id] * len(one)
    assert causal.encode_many(tokenizer, items()) == one


def test_a_subclass_changing_encode_is_encoded_through_it():
    class Tagged(CausalLMAdapter):
        def encode(self, tokenizer, segments, *, source, record_id):  # type: ignore[no-untyped-def]
            example = super().encode(tokenizer, segments, source=source, record_id=record_id)
            example.record_id += "!"
            return example

    made = Tagged(
        CausalLMAdapter.Config(tokenizer="byte-level", from_config={"model_type": "llama"}), base_dir=Path(".")
    )
    tokenizer = made.load_tokenizer()
    assert [e.record_id for e in made.encode_many(tokenizer, items()[:3])] == ["r0!", "r1!", "r2!"]


def test_token_labels_follow_character_spans():
    segments = [ift.Segment("ab", False), ift.Segment("cd", True), ift.Segment("e", False)]
    # tokens: "a", "bc" (begins in the prompt, reaches into the answer: straddles, untrained), "d", an empty span
    # between "d" and "e" (one side untrained), "e"; and an empty span between "c" and "d" (trained on both sides)
    _, mask = trainable_mask(segments)
    offsets = [(0, 1), (1, 3), (3, 4), (4, 4), (4, 5), (3, 3)]
    result = labels_from_offsets([10, 11, 12, 13, 14, 15], offsets, mask)
    assert result.labels == [-100, -100, 12, -100, -100, 15] and result.straddling == [1]
    assert labels_from_offsets([], [], mask).labels == []
