"""Configuration models for components: every plugin class declares its keys with one of these.

Unknown keys are errors, so a misspelled recipe key never passes silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator


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
        "auto", description="How examples become batches; auto picks the fastest the model and hardware allow."
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Keep only each layer's input in the forward pass and recompute the layer in backward "
        "(activation checkpointing): less memory, about one more forward pass of time. Same loss and gradients. "
        "auto: on a CPU when one max_length example's activations would exceed the budget of a forward pass "
        "(see max_tokens_per_forward) and the adapter supports it; off on a GPU.",
    )

    @model_validator(mode="after")
    def _adapter_checkpoints(self, info: ValidationInfo) -> Any:
        model = (info.context or {}).get("model")
        if (
            self.gradient_checkpointing is True
            and model is not None
            and not getattr(model.cls, "supports_gradient_checkpointing", False)
        ):
            raise ValueError(
                f"gradient_checkpointing = true needs a model adapter that supports it; {model.name!r} does not"
            )
        return self
