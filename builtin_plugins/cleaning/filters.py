"""The ``length-filter`` transform: bounds on the prompt's and the answer's length."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

import ift
from ift.builtin_plugins.cleaning.text import prompt, words


class LengthFilterConfig(ift.ComponentConfig):
    unit: Literal["words", "chars"] = Field("words", description="Count words or characters.")
    min_prompt: int | None = Field(None, ge=0, description="Drop records whose prompt (user turns) is shorter.")
    max_prompt: int | None = Field(None, ge=0, description="Drop records whose prompt is longer.")
    min_answer: int | None = Field(None, ge=0, description="Drop records whose answer (last turn) is shorter.")
    max_answer: int | None = Field(None, ge=0, description="Drop records whose answer is longer.")

    @model_validator(mode="after")
    def _ordered(self) -> LengthFilterConfig:
        for part in ("prompt", "answer"):
            low, high = getattr(self, f"min_{part}"), getattr(self, f"max_{part}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{part} ({low}) is greater than max_{part} ({high})")
        return self


class LengthFilter(ift.RecordFilter):
    """Drop records whose prompt or answer length is out of bounds. Each record is counted once, under
    the first failed bound in the order: prompt too short, prompt too long, answer too short, answer
    too long. A preference pair's answer bounds hold for both its answers (the pair goes whole)."""

    name = "length-filter"
    Config = LengthFilterConfig
    config: LengthFilterConfig

    def _length(self, text: str) -> int:
        return len(words(text)) if self.config.unit == "words" else len(text.strip())

    def reason(self, record: ift.InstructionRecord) -> str | None:
        c = self.config
        texts = {"prompt": [prompt(record)], "answer": [m.content for m in record.completions]}
        for part in ("prompt", "answer"):
            low, high = getattr(c, f"min_{part}"), getattr(c, f"max_{part}")
            if low is None and high is None:
                continue
            lengths = [self._length(text) for text in texts[part]]
            if low is not None and min(lengths) < low:
                return f"{part} too short"
            if high is not None and max(lengths) > high:
                return f"{part} too long"
        return None
