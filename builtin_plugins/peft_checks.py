"""Checks of a ``[model.peft]`` section against the model it is applied to, run before any training: target
modules that the model does not have, methods the model cannot take, and the classification head that
sequence classification trains fully. Problems name their recipe key under ``model.peft``."""

from __future__ import annotations

import re
from typing import Any

import ift

KEY = "model.peft"
VIRTUAL_TOKEN_METHODS = ("prefix-tuning", "prompt-tuning")


def classification_head(model: Any) -> list[str]:
    backbone = getattr(model, "base_model_prefix", "")
    head = [
        name for name, child in model.named_children() if name != backbone and any(True for _ in child.parameters())
    ]
    if not head:
        raise ift.RecipeError(
            [
                ift.Problem(
                    f"{KEY}.modules_to_save",
                    f"cannot find the classification head of this "
                    f"{type(model).__name__} (children: "
                    f"{', '.join(n for n, _ in model.named_children())})",
                )
            ]
        )
    return head


def with_head(modules: list[str] | None, head: list[str]) -> list[str] | None:
    merged = list(dict.fromkeys([*(modules or []), *head]))
    return merged or None


def head_pattern(head: list[str]) -> str | None:
    # The head is trained fully (modules_to_save); an adapter on it too would be trained twice.
    return "(" + "|".join(re.escape(h) for h in head) + r")(\..*)?" if head else None


def _module_names(model: Any) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _matches(names: list[str], target: str, regex: bool) -> bool:
    if regex:
        return any(re.fullmatch(target, n) for n in names)
    return any(n == target or n.endswith("." + target) for n in names)


def module_hint(model: Any) -> str:
    """The model's module names by kind, so a wrong target can be fixed without reading its source."""
    import torch

    linear: set[str] = set()
    other: set[str] = set()
    for name, module in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if not name or short.isdigit():
            continue
        (linear if isinstance(module, torch.nn.Linear) else other).add(short)
    other -= linear
    return (
        f"; linear layers in this model: {', '.join(sorted(linear)) or 'none'}; other modules: "
        f"{', '.join(sorted(other)[:40])}"
    )


def check_modules(model: Any, section: Any, head: list[str]) -> None:
    names = _module_names(model)
    problems = []
    targets = getattr(section, "target_modules", None)
    if isinstance(targets, str) and targets != "all-linear":
        if not _matches(names, targets, regex=True):
            problems.append(
                ift.Problem(
                    f"{KEY}.target_modules",
                    f"the pattern {targets!r} matches no module "
                    f"name of this {type(model).__name__}{module_hint(model)}",
                )
            )
    elif isinstance(targets, list):
        missing = [t for t in targets if not _matches(names, t, regex=False)]
        if missing:
            problems.append(
                ift.Problem(
                    f"{KEY}.target_modules",
                    f"{', '.join(map(repr, missing))} not found in this {type(model).__name__}{module_hint(model)}",
                )
            )
    elif targets is None and section.method == "ia3":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING

        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
            problems.append(
                ift.Problem(
                    f"{KEY}.target_modules",
                    f"IA3 has no default modules for model type "
                    f"{model_type!r}: set target_modules and feedforward_modules"
                    f"{module_hint(model)}",
                )
            )
    for key in ("feedforward_modules", "modules_to_save"):
        wanted = getattr(section, key, None) or []
        missing = [t for t in wanted if not _matches(names, t, regex=False)]
        if missing:
            problems.append(
                ift.Problem(
                    f"{KEY}.{key}",
                    f"{', '.join(map(repr, missing))} not found in this {type(model).__name__}{module_hint(model)}",
                )
            )
    if problems:
        raise ift.RecipeError(problems)


def check_method_fits(model: Any, section: Any, task_type: str) -> None:
    import inspect

    if section.method == "prefix-tuning" and task_type not in ("CAUSAL_LM", "SEQ_2_SEQ_LM"):
        # Prefix tuning hands its prefixes to the model as a key/value cache; language models take one through
        # their keyword arguments, while for the other tasks peft looks for it in the signature of the model's
        # or its backbone's forward, and fails at the first batch when neither has it.
        from transformers import PreTrainedModel

        owners = [model, *(child for _, child in model.named_children() if isinstance(child, PreTrainedModel))]
        if not any("past_key_values" in inspect.signature(o.forward).parameters for o in owners):
            raise ift.RecipeError(
                [
                    ift.Problem(
                        f"{KEY}.method",
                        f"prefix-tuning needs a model that takes a key/value "
                        f"cache (past_key_values), and {type(model).__name__} does not; use "
                        "prompt-tuning or lora",
                    )
                ]
            )
    if section.method in VIRTUAL_TOKEN_METHODS and model.get_input_embeddings() is None:
        raise ift.RecipeError(
            [
                ift.Problem(
                    f"{KEY}.method",
                    f"{section.method} needs the model's input embeddings, "
                    f"which {type(model).__name__} does not expose",
                )
            ]
        )
