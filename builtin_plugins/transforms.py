"""Builtin transforms: the basic cleaning every run wants. Each counts what it drops by reason."""

from __future__ import annotations

from pydantic import Field

import ift


class DropInvalid(ift.Transform):
    """Drop records with an empty turn or an answer identical to the prompt."""

    name = "drop-invalid"

    def apply(self, records: list[ift.InstructionRecord], tally: ift.Tally) -> list[ift.InstructionRecord]:
        kept = []
        for record in records:
            if any(not m.content.strip() for m in record.messages):
                tally.drop("empty turn")
            elif record.answer.strip() == record.messages[-2].content.strip() if len(record.messages) > 1 \
                    else False:
                tally.drop("answer identical to prompt")
            else:
                kept.append(record)
        return kept


class DedupConfig(ift.ComponentConfig):
    by: str = Field("conversation", pattern="^(conversation|prompt)$",
                    description="'conversation': all turns must match; 'prompt': same prompt is a duplicate.")


class ExactDedup(ift.Transform):
    """Drop exact duplicates after whitespace normalisation; the first occurrence is kept."""

    name = "dedup"
    Config = DedupConfig

    def apply(self, records: list[ift.InstructionRecord], tally: ift.Tally) -> list[ift.InstructionRecord]:
        seen: set[tuple[tuple[str, str], ...]] = set()
        kept = []
        for record in records:
            messages = record.messages if self.config.by == "conversation" else record.messages[:-1]  # type: ignore[attr-defined]
            key = tuple((m.role, " ".join(m.content.split()).lower()) for m in messages)
            if key in seen:
                tally.drop("duplicate")
            else:
                seen.add(key)
                kept.append(record)
        return kept


@ift.hookimpl
def ift_register_transforms() -> list[type]:
    return [DropInvalid, ExactDedup]
