"""Two PEFT methods beyond ift's builtin ones, each a small :class:`ift.PeftMethod` over peft's own config class:

- ``loha``: low-rank Hadamard product (LyCORIS' LoHa): the update is (W1a W1b) * (W2a W2b), element-wise, so
  rank ``r`` reaches up to rank r^2; scaled by ``alpha / r``.
- ``vera``: vector-based random matrix adaptation: one pair of frozen random projections shared by every layer,
  and only two scaling vectors trained per layer (a few hundred numbers on a small model). The projections are
  saved with the adapter (``save_projection``), so the folder loads with plain peft on any machine.

Both save with ``save_pretrained`` and load with ``PeftModel.from_pretrained``, as ift's builtin methods do.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

import ift


def _with_head(modules: list[str] | None, head: list[str]) -> list[str] | None:
    """A classification model's head is trained fully and saved beside the adapter."""
    merged = list(dict.fromkeys([*(modules or []), *head]))
    return merged or None


def _not_head(head: list[str]) -> str | None:
    """A pattern of the head's modules, to keep the adapter off them (they are trained fully already)."""
    return "(" + "|".join(re.escape(h) for h in head) + r")(\..*)?" if head else None


def _targets(targets: str | list[str]) -> str:
    return targets if isinstance(targets, str) else ", ".join(targets)


class LoHaConfig(ift.PeftMethodConfig):
    method: Literal["loha"] = "loha"
    r: int = Field(8, gt=0, description="Rank of each of the two low-rank factors.")
    alpha: float = Field(8, gt=0, description="Scale: the update is multiplied by alpha / r.")
    rank_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the update's ranks while training.")
    module_dropout: float = Field(0.0, ge=0, lt=1, description="Chance of skipping a module's update in a step.")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear', module names, or one regular expression."
    )
    modules_to_save: list[str] | None = Field(None, description="Modules trained fully and saved beside the adapter.")


class LoHaMethod(ift.PeftMethod):
    name = "loha"
    Config = LoHaConfig
    config: LoHaConfig
    label = "LoHa"

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        from peft import LoHaConfig as PeftLoHaConfig

        c = self.config
        # peft annotates alpha as int, but only uses it in the float scale alpha / r: floats work.
        return PeftLoHaConfig(
            r=c.r,
            alpha=c.alpha,
            rank_dropout=c.rank_dropout,
            module_dropout=c.module_dropout,  # type: ignore[arg-type]
            target_modules=c.target_modules,
            modules_to_save=_with_head(c.modules_to_save, head),
            exclude_modules=_not_head(head),
            task_type=task_type,
        )

    def describe(self) -> str:
        c = self.config
        return (
            f"LoHa r={c.r}, alpha={c.alpha:g} (alpha/r = {c.alpha / c.r:.3g}), rank_dropout={c.rank_dropout:g}, "
            f"module_dropout={c.module_dropout:g}, on {_targets(c.target_modules)}"
        )


class VeraConfig(ift.PeftMethodConfig):
    method: Literal["vera"] = "vera"
    r: int = Field(256, gt=0, description="Rank of the shared random projections (cheap: they are not trained).")
    d_initial: float = Field(0.1, gt=0, description="Initial value of the trained scaling vector d.")
    dropout: float = Field(0.0, ge=0, lt=1)
    projection_seed: int = Field(0, description="Seed of the shared random projections.")
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear', module names, or one regular expression (linear layers only)."
    )
    modules_to_save: list[str] | None = Field(None, description="Modules trained fully and saved beside the adapter.")


class VeraMethod(ift.PeftMethod):
    name = "vera"
    Config = VeraConfig
    config: VeraConfig
    label = "VeRA"

    def check(self, model: Any, task_type: str, head: list[str]) -> None:
        if head and self.config.target_modules == "all-linear":
            # peft's VeRA has no exclude_modules: "all-linear" would adapt the head it also trains fully
            raise ift.RecipeError(
                [
                    ift.Problem(
                        "model.peft.target_modules",
                        "vera on a classification model needs "
                        "target_modules listed by name (the head is trained fully)",
                    )
                ]
            )

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        from peft import VeraConfig as PeftVeraConfig

        c = self.config
        return PeftVeraConfig(
            r=c.r,
            d_initial=c.d_initial,
            vera_dropout=c.dropout,
            projection_prng_key=c.projection_seed,
            save_projection=True,
            target_modules=c.target_modules,
            modules_to_save=_with_head(c.modules_to_save, head),
            task_type=task_type,
        )

    def describe(self) -> str:
        c = self.config
        return (
            f"VeRA r={c.r} (shared random projections, seed {c.projection_seed}), d_initial={c.d_initial:g}, "
            f"dropout={c.dropout:g}, on {_targets(c.target_modules)}"
        )
