"""``[model.peft]``: parameter-efficient fine-tuning for every model adapter, through ``peft``.

Adapters declare ``peft: PeftSection | None`` in their Config and call :func:`apply_peft` on the loaded
model; validation problems are reported against the recipe key ``model.peft``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

import ift
from ift.errors import Problem


class PeftSection(ift.ComponentConfig):
    method: Literal["lora"] = "lora"
    r: int = Field(16, gt=0)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names.")
    use_dora: bool = False
    use_rslora: bool = False
    modules_to_save: list[str] | None = None


def apply_peft(model: Any, section: PeftSection, *, task_type: str) -> Any:
    """Wrap ``model`` with the adapter ``section`` describes. ``task_type`` is peft's (``CAUSAL_LM``,
    ``SEQ_2_SEQ_LM``, ``SEQ_CLS``)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=section.target_modules, use_dora=section.use_dora,
                      use_rslora=section.use_rslora, modules_to_save=section.modules_to_save, task_type=task_type)
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ift.RecipeError([Problem("model.peft.target_modules",
                                       f"{str(exc).strip().splitlines()[0]}; module names in this model: "
                                       f"{', '.join(names[:40])}")]) from exc
