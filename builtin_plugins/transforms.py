"""Builtin transforms: the basic cleaning every run wants (more in :mod:`ift.builtin_plugins.cleaning`).
Each counts what it drops by reason."""

from __future__ import annotations

from pydantic import Field

import ift
from ift.builtin_plugins.cleaning.text import is_eval, structure_problem


class DropInvalidConfig(ift.ComponentConfig):
    check_choices: bool = Field(True, description="Drop records whose label is not one of their declared choices.")


class DropInvalid(ift.RecordFilter):
    """Drop records that cannot be trained on, counted by the first reason that applies:

    - ``missing output``: no turns, or the last turn is not the assistant's;
    - ``missing prompt``: no user turn;
    - ``bad role order``: turns do not alternate user / assistant after an optional leading system turn;
    - ``empty output``: the answer is blank; ``empty turn``: another turn is blank;
    - ``answer identical to prompt``: the answer equals the user turn before it (case and spacing ignored);
    - for a preference pair: ``empty rejected`` (the rejected answer is blank) and ``chosen identical to
      rejected`` (nothing to prefer; spacing ignored, case not: it may be what is preferred); the rejected
      answer equal to the prompt counts as ``answer identical to prompt``;
    - ``label outside choices``: the record declares ``choices`` and a ``label`` that is not among them.
    """

    name = "drop-invalid"
    Config = DropInvalidConfig
    config: DropInvalidConfig

    def reason(self, record: ift.InstructionRecord) -> str | None:
        problem = structure_problem(record)
        if problem is not None:
            return problem
        if not record.answer.strip():
            return "empty output"
        if any(not m.content.strip() for m in record.messages):
            return "empty turn"
        if _norm(record.answer) == _norm(record.messages[-2].content):
            return "answer identical to prompt"
        if record.rejected is not None:
            if not record.rejected.content.strip():
                return "empty rejected"
            if record.rejected.content.split() == record.answer.split():  # case kept: it can be the preference
                return "chosen identical to rejected"
            if _norm(record.rejected.content) == _norm(record.messages[-2].content):
                return "answer identical to prompt"
        if (
            self.config.check_choices
            and record.choices
            and record.label is not None
            and record.label.strip() not in {c.strip() for c in record.choices}
        ):
            return "label outside choices"
        return None


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


class DedupConfig(ift.ComponentConfig):
    by: str = Field(
        "conversation",
        pattern="^(conversation|prompt)$",
        description="'conversation': all turns must match (a preference pair: both answers, an "
        "unpaired record: its judgement too); 'prompt': same prompt is a duplicate.",
    )


class ExactDedup(ift.Transform):
    """Drop exact duplicates after whitespace and case normalisation; the first occurrence is kept.
    Records of an eval-only table are looked at first and never dropped, so a training record equal to an
    eval record is the one that goes."""

    name = "dedup"
    Config = DedupConfig
    config: DedupConfig

    def apply(self, records: list[ift.InstructionRecord], tally: ift.Tally) -> list[ift.InstructionRecord]:
        keys = [self.key(r) for r in records]
        seen = {key for key, r in zip(keys, records, strict=True) if is_eval(r)}
        kept = []
        for key, record in zip(keys, records, strict=True):
            if is_eval(record):
                kept.append(record)
            elif key in seen:
                tally.drop("duplicate")
            else:
                seen.add(key)
                kept.append(record)
        return kept

    def key(self, record: ift.InstructionRecord) -> tuple[tuple[str, str], ...]:
        if self.config.by == "prompt":
            messages = record.messages[:-1]
        else:  # a pair is one record: the same prompt and chosen answer with another rejected one is kept
            messages = record.messages + ([record.rejected] if record.rejected is not None else [])
        key = tuple((m.role, " ".join(m.content.split()).lower()) for m in messages)
        if self.config.by == "conversation" and record.desirable is not None:
            key += (("desirable", str(record.desirable)),)
        return key


@ift.hookimpl
def ift_register_transforms() -> list[type]:
    return [DropInvalid, ExactDedup]
