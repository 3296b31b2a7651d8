"""Configuration models for components: every plugin class declares its keys with one of these.

Unknown keys are errors, so a misspelled recipe key never passes silently.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ComponentConfig(BaseModel):
    """Base of every component's config model. Subclass it and declare fields with defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainerConfig(ComponentConfig):
    """Fields every trainer has, because the data pipeline needs them before training starts."""

    max_length: int = Field(1024, gt=0, description="Longest example in tokens.")
    overlong: Literal["truncate", "drop"] = Field(
        "truncate", description="Examples longer than max_length: cut at max_length, or dropped (counted)."
    )
    batch_size: int = Field(8, gt=0, description="Examples (packing: packed rows) per device per micro-batch.")
    batching: Literal["auto", "padding", "length-grouped", "padding-free", "packing"] = Field(
        "auto", description="How examples become batches; auto picks the fastest the model and hardware allow.")
