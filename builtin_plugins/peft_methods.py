"""``[model.peft]``: parameter-efficient fine-tuning for every model adapter, through ``peft``.

Five methods, chosen by ``method``; each accepts only its own keys (a discriminated union), so a key that
belongs to another method is a recipe error naming it (``model.peft.r: unknown key for method
'prompt-tuning'``):

- ``lora`` (with ``use_dora`` / ``use_rslora`` switches), ``adalora`` (LoRA whose ranks are pruned during
  training by importance), ``ia3`` (learned rescaling vectors): they change existing layers;
- ``prefix-tuning`` (trained keys/values prepended at every layer) and ``prompt-tuning`` (trained input
  embeddings prepended to the prompt): they add virtual tokens, so they cannot use padding-free or packed
  batches (their position handling assumes one sequence per row).

Adapters declare ``peft: PeftSection | None`` in their Config and call :func:`apply_peft` on the loaded
model; they report :func:`supports_packing`, call :func:`on_optimizer_step` from their hook of that name
and add :func:`training_penalty` to their summed loss. Problems are reported against ``model.peft.<key>``
before any training starts (AdaLoRA's schedule, which needs the run's step count, at its first update).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal, cast

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

import ift
from ift.builtin_plugins.peft_checks import (
    KEY,
    VIRTUAL_TOKEN_METHODS,
    check_method_fits,
    check_modules,
    classification_head,
    head_pattern,
    module_hint,
    with_head,
)
from ift.errors import Problem
from ift.host import did_you_mean


class _Method(ift.ComponentConfig):
    """What every method section can do; subclasses add their keys."""

    #: Whether padding-free / packed batches (several examples per row, positions restarting) work.
    packing: ClassVar[bool] = True
    label: ClassVar[str] = ""

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        """The ``peft`` config object. ``head``: modules a classification model must train and save."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the manifest and the run's console output."""
        raise NotImplementedError


def _targets_text(targets: str | list[str] | None) -> str:
    if targets is None:
        return "the architecture's default modules"
    return targets if isinstance(targets, str) else ", ".join(targets)


class LoraSection(_Method):
    method: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="Rank of the update matrices.")
    alpha: float = Field(32, gt=0, description="Scale: the update is multiplied by alpha / r (alpha / sqrt(r) "
                                               "with use_rslora).")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear', module names (matched "
                                            "at the end of the module's path), or one regular expression.")
    use_dora: bool = Field(False, description="DoRA: learn a magnitude per output and a LoRA direction.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    modules_to_save: list[str] | None = Field(None, description="Modules trained fully and saved beside the "
                                              "adapter (e.g. embed_tokens after adding tokens).")
    label: ClassVar[str] = "LoRA"

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        from peft import LoraConfig

        # peft annotates lora_alpha as int, but only uses it in the float scale alpha / r: floats work.
        return LoraConfig(r=self.r, lora_alpha=self.alpha,  # type: ignore[arg-type]
                          lora_dropout=self.dropout,
                          target_modules=self.target_modules, use_dora=self.use_dora, use_rslora=self.use_rslora,
                          modules_to_save=with_head(self.modules_to_save, head),
                          exclude_modules=head_pattern(head), task_type=task_type)

    def describe(self) -> str:
        kind = "DoRA" if self.use_dora else "LoRA"
        scale = f"alpha/sqrt(r) = {self.alpha / math.sqrt(self.r):.3g}" if self.use_rslora else \
            f"alpha/r = {self.alpha / self.r:.3g}"
        return (f"{kind} r={self.r}, alpha={self.alpha:g} ({scale}{', rsLoRA' if self.use_rslora else ''}), "
                f"dropout={self.dropout:g}, on {_targets_text(self.target_modules)}")


class AdaLoraSection(_Method):
    method: Literal["adalora"]
    init_r: int = Field(12, gt=0, description="Rank every module starts with.")
    target_r: int = Field(8, gt=0, description="Average rank left after pruning.")
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="As for lora.")
    tinit: float = Field(0.1, ge=0, description="Warm-up before any pruning: a fraction of the run's "
                         "optimizer steps (below 1) or a number of steps (a whole number from 1).")
    tfinal: float = Field(0.2, ge=0, description="Steps at the end with the final ranks fixed; like tinit.")
    delta_t: int = Field(1, gt=0, description="Re-allocate ranks every delta_t steps while pruning.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance scores.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of their uncertainty.")
    orth_reg_weight: float = Field(0.5, ge=0, description="Weight of the orthogonality penalty on P and Q, "
                                   "added to the training loss.")
    modules_to_save: list[str] | None = None
    label: ClassVar[str] = "AdaLoRA"

    # Field validators (not one model validator) so that each problem names its own key.
    @field_validator("target_r")
    @classmethod
    def _below_init_r(cls, value: int, info: ValidationInfo) -> int:
        init_r = info.data.get("init_r")
        if init_r is not None and value >= init_r:
            raise ValueError(f"target_r ({value}) must be below init_r ({init_r}): AdaLoRA prunes ranks from "
                             "init_r down to target_r")
        return value

    @field_validator("tinit", "tfinal")
    @classmethod
    def _steps_or_fraction(cls, value: float, info: ValidationInfo) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(f"{value:g}: use a fraction of the run below 1, or a whole number of steps")
        tinit = info.data.get("tinit")
        if info.field_name == "tfinal" and tinit is not None and tinit < 1 and value < 1 and tinit + value >= 1:
            raise ValueError(f"tinit + tfinal = {tinit + value:g} of the run leaves no steps to allocate ranks "
                             "in; lower them")
        return value

    def steps(self, total: int) -> tuple[int, int]:
        """``tinit`` and ``tfinal`` in optimizer steps for a run of ``total`` steps."""
        def count(value: float) -> int:
            return int(value) if value >= 1 else int(round(value * total))
        return count(self.tinit), count(self.tfinal)

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        from peft import AdaLoraConfig

        # total_step is unknown until the trainer has planned its batches: a placeholder that allows any
        # schedule; on_optimizer_step sets the real one before the first rank update.
        # peft annotates lora_alpha as int, but only uses it in the float scale alpha / r: floats work.
        return AdaLoraConfig(init_r=self.init_r, target_r=self.target_r,
                             lora_alpha=self.alpha,  # type: ignore[arg-type]
                             lora_dropout=self.dropout, target_modules=self.target_modules, tinit=0, tfinal=0,
                             deltaT=self.delta_t, beta1=self.beta1, beta2=self.beta2,
                             orth_reg_weight=self.orth_reg_weight, total_step=_PLACEHOLDER_STEPS,
                             modules_to_save=with_head(self.modules_to_save, head),
                             exclude_modules=head_pattern(head), task_type=task_type)

    def describe(self) -> str:
        def when(value: float) -> str:
            return f"{value:.0%}" if value < 1 else f"{int(value)} steps"
        return (f"AdaLoRA init_r={self.init_r} -> target_r={self.target_r}, alpha={self.alpha:g}, "
                f"tinit={when(self.tinit)}, tfinal={when(self.tfinal)}, delta_t={self.delta_t}, "
                f"orth_reg_weight={self.orth_reg_weight:g}, on {_targets_text(self.target_modules)}")


class IA3Section(_Method):
    method: Literal["ia3"]
    target_modules: str | list[str] | None = Field(None, description="Modules whose activations are rescaled; "
                                                   "default: peft's choice for the architecture (k, v, ffn out).")
    feedforward_modules: list[str] | None = Field(None, description="Which of target_modules are feed-forward "
                                                  "layers (scaled on their input, not output).")
    modules_to_save: list[str] | None = None
    label: ClassVar[str] = "IA3"

    @field_validator("feedforward_modules")
    @classmethod
    def _in_targets(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        targets = info.data.get("target_modules")
        if value is not None and "target_modules" in info.data and targets is None:
            raise ValueError("needs target_modules too (feed-forward modules are a subset of them)")
        if value is not None and isinstance(targets, list):
            extra = [m for m in value if m not in targets]
            if extra:
                raise ValueError(f"{extra} are not in target_modules {targets}")
        return value

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        from peft import IA3Config

        return IA3Config(target_modules=self.target_modules, feedforward_modules=self.feedforward_modules,
                         modules_to_save=with_head(self.modules_to_save, head),
                         exclude_modules=head_pattern(head), task_type=task_type)

    def describe(self) -> str:
        ff = f"; feed-forward: {', '.join(self.feedforward_modules)}" if self.feedforward_modules else ""
        return f"IA3 on {_targets_text(self.target_modules)}{ff}"


class PrefixTuningSection(_Method):
    method: Literal["prefix-tuning"]
    num_virtual_tokens: int = Field(20, gt=0, description="Trained key/value positions prepended at every layer.")
    projection: bool = Field(False, description="Produce the prefixes through a two-layer MLP (more stable).")
    projection_hidden_size: int | None = Field(None, gt=0, description="That MLP's width; default: the model's "
                                               "hidden size.")
    packing: ClassVar[bool] = False
    label: ClassVar[str] = "prefix tuning"

    @field_validator("projection_hidden_size")
    @classmethod
    def _needs_projection(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("projection") is False:
            raise ValueError("is set but projection = false")
        return value

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        from peft import PrefixTuningConfig

        options: dict[str, Any] = {"num_virtual_tokens": self.num_virtual_tokens,
                                   "prefix_projection": self.projection, "task_type": task_type}
        if self.projection:
            options["encoder_hidden_size"] = self.projection_hidden_size or _hidden_size(model)
        if head:
            options["modules_to_save"] = list(head)
        return PrefixTuningConfig(**options)

    def describe(self) -> str:
        projection = f", MLP projection ({self.projection_hidden_size or 'hidden size'})" if self.projection else ""
        return f"prefix tuning, {self.num_virtual_tokens} virtual tokens per layer{projection}"


class PromptTuningSection(_Method):
    method: Literal["prompt-tuning"]
    num_virtual_tokens: int = Field(20, gt=0, description="Trained embeddings prepended to the prompt.")
    init_text: str | None = Field(None, min_length=1, description="Start the virtual tokens from the embeddings of "
                                  "this text (repeated or cut to fit); default: random.")
    packing: ClassVar[bool] = False
    label: ClassVar[str] = "prompt tuning"

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        from peft import PromptTuningConfig

        # RANDOM on purpose: peft's TEXT init reloads the tokenizer by name, which a byte-level or local
        # tokenizer does not have; apply_peft copies the text's embeddings in itself.
        return PromptTuningConfig(num_virtual_tokens=self.num_virtual_tokens, prompt_tuning_init="RANDOM",
                                  modules_to_save=list(head) or None, task_type=task_type)

    def describe(self) -> str:
        init = f"initialised from {self.init_text!r}" if self.init_text else "random init"
        return f"prompt tuning, {self.num_virtual_tokens} virtual tokens ({init})"


_PLACEHOLDER_STEPS = 1_000_000_000
_SECTIONS: dict[str, type[_Method]] = {"lora": LoraSection, "adalora": AdaLoraSection, "ia3": IA3Section,
                                       "prefix-tuning": PrefixTuningSection, "prompt-tuning": PromptTuningSection}
METHODS = tuple(_SECTIONS)


def _method_of(value: Any) -> str | None:
    if isinstance(value, dict):
        method = value.get("method", "lora")  # lora when the table does not say
        return method if isinstance(method, str) else None
    return getattr(value, "method", None)


def _recipe_errors(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Report errors at ``model.peft.<key>``: pydantic puts the union's tag in the path
    (``peft.lora.r``), and its messages for unknown keys and methods do not say what is allowed."""
    try:
        return handler(value)
    except ValidationError as exc:
        errors: list[Any] = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if loc and loc[0] in _SECTIONS:
                loc = loc[1:]
            kind = err["type"]
            if kind in ("union_tag_invalid", "union_tag_not_found"):
                if not isinstance(value, dict):
                    message = f"must be a table such as {{ method = \"lora\", r = 16 }} (got {value!r})"
                    errors.append(_value_error(loc, value, message))
                    continue
                method = value.get("method")
                message = (f"{method!r} is not a PEFT method{did_you_mean(str(method), METHODS)}; "
                           f"available: {', '.join(METHODS)}")
                errors.append(_value_error((*loc, "method"), method, message))
            elif kind == "extra_forbidden" and isinstance(value, dict):
                method = _method_of(value) or "lora"
                key, allowed = str(loc[-1]), list(_SECTIONS[method].model_fields)
                message = f"unknown key{did_you_mean(key, allowed)}"  # a typo: the recipe's usual message
                if message == "unknown key":  # a key of another method, or none: say what this one takes
                    owners = [m for m, section in _SECTIONS.items() if key in section.model_fields]
                    belongs = f" ({key} is a key of {', '.join(owners)})" if owners else ""
                    message = f"unknown key for method {method!r}{belongs}; its keys: {', '.join(allowed)}"
                errors.append(_value_error(loc, err["input"], message))
            else:
                detail: dict[str, Any] = {"type": kind, "loc": loc, "input": err["input"]}
                if "ctx" in err:
                    detail["ctx"] = err["ctx"]
                errors.append(detail)
        raise ValidationError.from_exception_data(exc.title, errors) from None


def _value_error(loc: tuple[Any, ...], value: Any, message: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": message}}


PeftSection = Annotated[
    Annotated[LoraSection, Tag("lora")] | Annotated[AdaLoraSection, Tag("adalora")]
    | Annotated[IA3Section, Tag("ia3")] | Annotated[PrefixTuningSection, Tag("prefix-tuning")]
    | Annotated[PromptTuningSection, Tag("prompt-tuning")],
    Discriminator(_method_of),
    WrapValidator(_recipe_errors),
]
"""The ``[model.peft]`` table: one of the method sections, chosen by ``method`` (default ``lora``)."""


# --- applying ------------------------------------------------------------------------------------


def apply_peft(model: Any, section: Any, *, task_type: str, tokenizer: Any = None) -> Any:
    """Wrap ``model`` with the method ``section`` describes. ``task_type`` is peft's (``CAUSAL_LM``,
    ``SEQ_2_SEQ_LM``, ``SEQ_CLS``). For ``SEQ_CLS`` the classification head (every child module besides the
    backbone that has weights) is trained fully and saved with the adapter. ``tokenizer`` is needed for
    ``prompt-tuning`` with ``init_text``.

    The wrapped model's logits always line up with the input ids: prompt tuning of a causal LM prepends
    virtual tokens, whose logit positions are dropped from the output, so adapters compute losses the same
    way for every method."""
    from peft import get_peft_model

    head = classification_head(model) if task_type == "SEQ_CLS" else []
    check_modules(model, section, head)
    check_method_fits(model, section, task_type)
    try:
        config = section.peft_config(model, task_type, head)
        wrapped = get_peft_model(model, config)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        key = "method" if section.method in VIRTUAL_TOKEN_METHODS else "target_modules"
        raise ift.RecipeError([Problem(f"{KEY}.{key}", f"{section.label} cannot be applied to this "
                                       f"{type(model).__name__}: {_first_line(exc)}{module_hint(model)}")]) from exc
    if isinstance(section, PromptTuningSection) and section.init_text:
        _init_prompt_from_text(wrapped, section.init_text, tokenizer)
    if isinstance(section, PromptTuningSection) and task_type == "CAUSAL_LM":
        wrapped.register_forward_hook(_drop_virtual_positions, with_kwargs=True)
    return wrapped


def supports_packing(section: Any) -> bool:
    """Whether an adapter with this ``[model.peft]`` (or None) can take padding-free / packed batches."""
    return section is None or section.packing


def describe_peft(section: Any) -> str:
    return section.describe() if section is not None else "full fine-tuning"


def on_optimizer_step(model: Any, section: Any, step: int, total_steps: int) -> None:
    """Per-update work of a method (adapters call this from their ``on_optimizer_step`` hook). AdaLoRA: set
    the schedule from the run's step count (checked once), then update importance scores and prune ranks."""
    if not isinstance(section, AdaLoraSection):
        return
    tuner = model.base_model
    config = tuner.peft_config[tuner.trainable_adapter_name]
    if config.total_step != total_steps:  # first update of this run (or of a resumed one)
        tinit, tfinal = section.steps(total_steps)
        if tinit >= total_steps - tfinal:
            raise ift.RecipeError([Problem(f"{KEY}.tinit", f"AdaLoRA's schedule (tinit = {tinit} steps, tfinal = "
                                           f"{tfinal} steps) leaves no step to allocate ranks in a run of "
                                           f"{total_steps} optimizer steps; lower model.peft.tinit / "
                                           "model.peft.tfinal or train longer")])
        config.total_step, config.tinit, config.tfinal = total_steps, tinit, tfinal
        if config.rank_pattern is None and step > total_steps - tfinal:
            config.rank_pattern = _rank_pattern_from_weights(tuner)  # resumed in the final phase
    tuner.update_and_allocate(step)


def training_penalty(model: Any) -> Any:
    """A method's regulariser to add to the training loss (mean per trainable token), or None. AdaLoRA: the
    orthogonality penalty on its P and Q matrices, as peft adds it to ``outputs.loss``; ift's adapters
    compute their loss from logits, so they add it themselves (in training mode only)."""
    if not getattr(model, "training", False) or not hasattr(model, "peft_config"):
        return None
    from peft.tuners.adalora import AdaLoraConfig, AdaLoraModel

    tuner = model.base_model
    if not isinstance(tuner, AdaLoraModel):
        return None
    name = tuner.trainable_adapter_name
    # AdaLoraModel types its peft_config as the base PeftConfig; an AdaLoraModel's configs are AdaLoraConfigs.
    weight = cast(AdaLoraConfig, tuner.peft_config[name]).orth_reg_weight
    if weight == 0:
        return None
    import torch

    total, count = None, 0
    for param_name, p in tuner.model.named_parameters():
        if ("lora_A" in param_name or "lora_B" in param_name) and name in param_name:
            cov = p @ p.T if "lora_A" in param_name else p.T @ p
            eye = torch.eye(cov.size(0), device=cov.device, dtype=cov.dtype)
            term = torch.linalg.matrix_norm(cov - eye)
            total = term if total is None else total + term
            count += 1
    return None if total is None else weight * total / count


def add_training_penalty(model: Any, loss_sum: Any, count: Any) -> Any:
    """``loss_sum`` plus the method's penalty once per trainable token, so that after the trainer divides by
    the step's token count the penalty enters the mean loss exactly once."""
    penalty = training_penalty(model)
    return loss_sum if penalty is None else loss_sum + penalty * count


def _hidden_size(model: Any) -> int:
    config = model.config
    for name in ("hidden_size", "d_model", "n_embd"):
        if isinstance(getattr(config, name, None), int):
            return int(getattr(config, name))
    raise ift.RecipeError([Problem(f"{KEY}.projection_hidden_size", "cannot read the model's hidden size from "
                                   "its config: set projection_hidden_size")])


def _init_prompt_from_text(model: Any, text: str, tokenizer: Any) -> None:
    import torch

    if tokenizer is None:
        raise ift.RecipeError([Problem(f"{KEY}.init_text", "this model adapter does not pass its tokenizer to "
                                       "apply_peft, so the text cannot be tokenized")])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ift.RecipeError([Problem(f"{KEY}.init_text", f"{text!r} tokenizes to no tokens")])
    embedding = model.prompt_encoder[model.active_adapter].embedding
    rows = embedding.weight.shape[0]  # num_virtual_tokens x transformer submodules (2 for encoder-decoder)
    ids = (ids * math.ceil(rows / len(ids)))[:rows]
    with torch.no_grad():
        words = model.word_embeddings(torch.tensor(ids, device=embedding.weight.device))
        embedding.weight.copy_(words.to(embedding.weight.dtype))


def _drop_virtual_positions(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    inputs = kwargs.get("input_ids", args[0] if args else None)
    if inputs is None:
        inputs = kwargs.get("inputs_embeds")
    logits = getattr(output, "logits", None)
    if inputs is not None and logits is not None and logits.dim() == 3 and logits.size(1) > inputs.size(1):
        output["logits"] = logits[:, logits.size(1) - inputs.size(1):]
    return output


def _rank_pattern_from_weights(tuner: Any) -> dict[str, list[bool]]:
    """The kept ranks of each module, read from the zeros pruning left in ``lora_E`` (a run resumed after
    pruning ended has no rank pattern in memory)."""
    name = tuner.trainable_adapter_name
    return {n: (p.detach() != 0).view(-1).tolist() for n, p in tuner.model.named_parameters()
            if f"lora_E.{name}" in n}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
