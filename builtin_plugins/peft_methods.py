"""``[model.peft]``: parameter-efficient fine-tuning for every model adapter, through ``peft``.

PEFT methods are a plugin kind (:class:`ift.PeftMethod`, hook ``ift_register_peft_methods``); this module
registers the five builtin ones (``lora``, ``adalora``, ``ia3``, ``prefix-tuning``, ``prompt-tuning``, see
:mod:`ift.builtin_plugins.peft_builtins`) and holds what adapters call. ``method`` picks a registered method
(``lora`` when the table does not say) and the table's other keys are validated by that method's ``Config``, so
a key that belongs to another method is a recipe error naming it (``model.peft.r: unknown key for method
'prompt-tuning'``).

Adapters declare ``peft: PeftSection | None`` in their Config and call :func:`apply_peft` on the loaded
model; they report :func:`supports_packing`, call :func:`on_optimizer_step` from their hook of that name
and add :func:`training_penalty` to their summed loss. Problems are reported against ``model.peft.<key>``
before any training starts (AdaLoRA's schedule, which needs the run's step count, at its first update).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import SerializeAsAny, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler, WrapValidator

import ift
from ift.builtin_plugins.peft_builtins import (
    BUILTIN_METHODS,
    AdaLoraMethod,
    AdaLoraSection,
    IA3Method,
    IA3Section,
    LoraMethod,
    LoraSection,
    PrefixTuningMethod,
    PrefixTuningSection,
    PromptTuningMethod,
    PromptTuningSection,
    adalora_penalty,
)
from ift.builtin_plugins.peft_checks import (
    KEY,
    VIRTUAL_TOKEN_METHODS,
    check_method_fits,
    check_modules,
    classification_head,
    module_hint,
)

__all__ = [
    "METHODS",
    "AdaLoraMethod",
    "AdaLoraSection",
    "IA3Method",
    "IA3Section",
    "LoraMethod",
    "LoraSection",
    "PeftSection",
    "PrefixTuningMethod",
    "PrefixTuningSection",
    "PromptTuningMethod",
    "PromptTuningSection",
    "add_training_penalty",
    "apply_peft",
    "describe_peft",
    "method_for",
    "on_optimizer_step",
    "provenance",
    "supports_packing",
    "training_penalty",
]

#: The builtin methods' names.
METHODS = tuple(cls.name for cls in BUILTIN_METHODS)
_ATTRIBUTE = "ift_peft_method"  # the PeftMethod a model was wrapped by, kept on the wrapped model


@ift.hookimpl
def ift_register_peft_methods() -> list[type]:
    return list(BUILTIN_METHODS)


# --- the [model.peft] table ----------------------------------------------------------------------


def _available(info: ValidationInfo) -> dict[str, tuple[type[ift.PeftMethod], dict[str, str]]]:
    """The methods a table may name, each with its plugin: the host's when the recipe is validated (the
    validation context holds it), else the builtin ones (a config built in a test or by hand)."""
    host = (info.context or {}).get("host")
    if host is not None:
        return {
            name: (r.cls, {"plugin": r.plugin, "distribution": r.distribution, "version": r.version})
            for name, r in host.registry["peft_method"].items()
        }
    builtin = {"plugin": "peft_methods", "distribution": "ift", "version": ift.__version__}
    return {cls.name: (cls, builtin) for cls in BUILTIN_METHODS}


def _validate_section(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """Validate the table with the named method's Config. Errors are reported at ``model.peft.<key>`` with
    messages that say what is allowed (pydantic's own do not)."""
    if isinstance(value, ift.PeftMethodConfig):
        return value
    if not isinstance(value, dict):
        message = f'must be a table such as {{ method = "lora", r = 16 }} (got {value!r})'
        raise ValidationError.from_exception_data("peft", [_value_error((), value, message)])
    methods = _available(info)
    method = value.get("method", "lora")  # lora when the table does not say
    if not isinstance(method, str) or method not in methods:
        names = list(methods)  # registration order: the builtin ones first
        message = (
            f"{method!r} is not a PEFT method{ift.did_you_mean(str(method), names)}; available: {', '.join(names)}"
        )
        for failure in getattr((info.context or {}).get("host"), "failures", []):  # it may be theirs
            message += (
                f"; plugin {failure.name!r} ({failure.distribution} {failure.version}, entry point "
                f"{failure.entry_point}) failed to load and may provide it: {failure.error}"
            )
        raise ValidationError.from_exception_data("peft", [_value_error(("method",), method, message)])
    cls, provider = methods[method]
    config_cls = cls.Config
    try:
        config = config_cls.model_validate({**value, "method": method}, context=info.context)
    except ValidationError as exc:
        errors: list[Any] = []
        for err in exc.errors():
            loc, kind = tuple(err["loc"]), err["type"]
            if kind == "extra_forbidden":
                key, allowed = str(loc[-1]), list(config_cls.model_fields)
                message = f"unknown key{ift.did_you_mean(key, allowed)}"  # a typo: the recipe's usual message
                if message == "unknown key":  # a key of another method, or none: say what this one takes
                    owners = [m for m, (other, _) in methods.items() if key in other.Config.model_fields]
                    belongs = f" ({key} is a key of {', '.join(owners)})" if owners else ""
                    message = f"unknown key for method {method!r}{belongs}; its keys: {', '.join(allowed)}"
                errors.append(_value_error(loc, err["input"], message))
            else:
                detail: dict[str, Any] = {"type": kind, "loc": loc, "input": err["input"]}
                if "ctx" in err:
                    detail["ctx"] = err["ctx"]
                errors.append(detail)
        raise ValidationError.from_exception_data(exc.title, errors) from None
    assert isinstance(config, ift.PeftMethodConfig)
    config._owner = (cls, provider)
    return config


def _value_error(loc: tuple[Any, ...], value: Any, message: str) -> Any:
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": message}}


PeftSection = Annotated[SerializeAsAny[ift.PeftMethodConfig], WrapValidator(_validate_section)]
"""The ``[model.peft]`` table: a registered method's config, chosen by ``method`` (default ``lora``)."""


def method_for(section: Any) -> ift.PeftMethod:
    """The :class:`ift.PeftMethod` for a validated ``[model.peft]`` table."""
    cls = section.method_class() if isinstance(section, ift.PeftMethodConfig) else None
    if cls is None:
        builtin = {c.name: c for c in BUILTIN_METHODS}
        cls = builtin.get(getattr(section, "method", ""))
        if cls is None:
            raise ift.RecipeError(
                [
                    ift.Problem(
                        f"{KEY}.method", f"{getattr(section, 'method', section)!r} is not a registered PEFT method"
                    )
                ]
            )
    return cls(section)


def provenance(section: Any) -> dict[str, str] | None:
    """The method's name and the plugin providing it (plugin, distribution, version), for the manifest."""
    if section is None:
        return None
    provider = section.provided_by() if isinstance(section, ift.PeftMethodConfig) else None
    return {"method": section.method, **(provider or {"plugin": "?", "distribution": "?", "version": "?"})}


# --- applying ------------------------------------------------------------------------------------


def apply_peft(model: Any, section: Any, *, task_type: str, tokenizer: Any = None) -> Any:
    """Wrap ``model`` with the method ``section`` describes. ``task_type`` is peft's (``CAUSAL_LM``,
    ``SEQ_2_SEQ_LM``, ``SEQ_CLS``). For ``SEQ_CLS`` the classification head (every child module besides the
    backbone that has weights) is trained fully and saved with the adapter. ``tokenizer`` is needed for
    ``prompt-tuning`` with ``init_text``.

    The wrapped model's logits always line up with the input ids: prompt tuning of a causal LM prepends
    virtual tokens, whose logit positions are dropped from the output, so adapters compute losses the same
    way for every method."""

    method = method_for(section)
    head = classification_head(model) if task_type == "SEQ_CLS" else []
    check_modules(model, section, head)
    check_method_fits(model, section, task_type)
    method.check(model, task_type, head)
    try:
        config = method.peft_config(model, task_type, head)
        wrapped = ift.wrap_peft_model(model, config)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        key = (
            "target_modules"
            if "target_modules" in type(section).model_fields and section.method not in VIRTUAL_TOKEN_METHODS
            else "method"
        )
        raise ift.RecipeError(
            [
                ift.Problem(
                    f"{KEY}.{key}",
                    f"{method.label or method.name} cannot be applied to this "
                    f"{type(model).__name__}: {_first_line(exc)}{module_hint(model)}",
                )
            ]
        ) from exc
    wrapped = method.after_wrap(wrapped, task_type=task_type, tokenizer=tokenizer)
    setattr(wrapped, _ATTRIBUTE, method)  # noqa: B010 - training_penalty(model) finds it here
    return wrapped


def supports_packing(section: Any) -> bool:
    """Whether an adapter with this ``[model.peft]`` (or None) can take padding-free / packed batches."""
    return section is None or method_for(section).packing


def describe_peft(section: Any) -> str:
    return method_for(section).describe() if section is not None else "full fine-tuning"


def _method_on(model: Any) -> ift.PeftMethod | None:
    for candidate in (model, getattr(model, "module", None)):  # DDP keeps the wrapped model in .module
        method = getattr(candidate, "__dict__", {}).get(_ATTRIBUTE)
        if isinstance(method, ift.PeftMethod):
            return method
    return None


def on_optimizer_step(model: Any, section: Any, step: int, total_steps: int) -> None:
    """Per-update work of a method (adapters call this from their ``on_optimizer_step`` hook). AdaLoRA: set
    the schedule from the run's step count (checked once), then update importance scores and prune ranks."""
    if section is None:
        return
    method = _method_on(model) or method_for(section)
    method.on_optimizer_step(model, step, total_steps)


def training_penalty(model: Any) -> Any:
    """A method's regulariser to add to the training loss (mean per trainable token), or None; in training mode
    only. AdaLoRA: the orthogonality penalty on its P and Q matrices, as peft adds it to ``outputs.loss`` (ift's
    adapters compute their loss from logits, so it is added to theirs)."""
    if not getattr(model, "training", False):
        return None
    method = _method_on(model)
    return method.training_penalty(model) if method is not None else adalora_penalty(model)


def add_training_penalty(model: Any, loss_sum: Any, count: Any) -> Any:
    """``loss_sum`` plus the method's penalty once per trainable token, so that after the trainer divides by
    the step's token count the penalty enters the mean loss exactly once."""
    penalty = training_penalty(model)
    return loss_sum if penalty is None else loss_sum + penalty * count


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
