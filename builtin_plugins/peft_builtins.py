"""The five builtin PEFT methods, registered through ``ift_register_peft_methods`` like any plugin's:

- ``lora`` (with ``use_dora`` / ``use_rslora`` switches), ``adalora`` (LoRA whose ranks are pruned during
  training by importance), ``ia3`` (learned rescaling vectors): they change existing layers;
- ``prefix-tuning`` (trained keys/values prepended at every layer) and ``prompt-tuning`` (trained input
  embeddings prepended to the prompt): they add virtual tokens, so they cannot use padding-free or packed
  batches (their position handling assumes one sequence per row).
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

from pydantic import Field, ValidationInfo, field_validator

import ift
from ift.builtin_plugins.peft_checks import KEY, head_pattern, with_head

#: AdaLoRA's total_step before the run's step count is known (any schedule fits in it)
PLACEHOLDER_STEPS = 1_000_000_000


def _targets_text(targets: str | list[str] | None) -> str:
    if targets is None:
        return "the architecture's default modules"
    return targets if isinstance(targets, str) else ", ".join(targets)


class LoraSection(ift.PeftMethodConfig):
    method: Literal["lora"] = "lora"
    r: int = Field(16, gt=0, description="Rank of the update matrices.")
    alpha: float = Field(
        32, gt=0, description="Scale: the update is multiplied by alpha / r (alpha / sqrt(r) with use_rslora)."
    )
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "all-linear",
        description="'all-linear', module names (matched at the end of the module's path), or one regular expression.",
    )
    use_dora: bool = Field(False, description="DoRA: learn a magnitude per output and a LoRA direction.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r).")
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained fully and saved beside the adapter (e.g. embed_tokens after adding tokens)."
    )


class LoraMethod(ift.PeftMethod):
    name = "lora"
    Config = LoraSection
    config: LoraSection
    label = "LoRA"

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        c = self.config
        from peft import LoraConfig

        # peft annotates lora_alpha as int, but only uses it in the float scale alpha / r: floats work.
        return LoraConfig(
            r=c.r,
            lora_alpha=c.alpha,  # type: ignore[arg-type]
            lora_dropout=c.dropout,
            target_modules=c.target_modules,
            use_dora=c.use_dora,
            use_rslora=c.use_rslora,
            modules_to_save=with_head(c.modules_to_save, head),
            exclude_modules=head_pattern(head),
            task_type=task_type,
        )

    def describe(self) -> str:
        c = self.config
        kind = "DoRA" if c.use_dora else "LoRA"
        scale = f"alpha/sqrt(r) = {c.alpha / math.sqrt(c.r):.3g}" if c.use_rslora else f"alpha/r = {c.alpha / c.r:.3g}"
        return (
            f"{kind} r={c.r}, alpha={c.alpha:g} ({scale}{', rsLoRA' if c.use_rslora else ''}), "
            f"dropout={c.dropout:g}, on {_targets_text(c.target_modules)}"
        )


class AdaLoraSection(ift.PeftMethodConfig):
    method: Literal["adalora"]
    init_r: int = Field(12, gt=0, description="Rank every module starts with.")
    target_r: int = Field(8, gt=0, description="Average rank left after pruning.")
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="As for lora.")
    tinit: float = Field(
        0.1,
        ge=0,
        description="Warm-up before any pruning: a fraction of the run's "
        "optimizer steps (below 1) or a number of steps (a whole number from 1).",
    )
    tfinal: float = Field(0.2, ge=0, description="Steps at the end with the final ranks fixed; like tinit.")
    delta_t: int = Field(1, gt=0, description="Re-allocate ranks every delta_t steps while pruning.")
    beta1: float = Field(0.85, gt=0, lt=1, description="EMA factor of the importance scores.")
    beta2: float = Field(0.85, gt=0, lt=1, description="EMA factor of their uncertainty.")
    orth_reg_weight: float = Field(
        0.5, ge=0, description="Weight of the orthogonality penalty on P and Q, added to the training loss."
    )
    modules_to_save: list[str] | None = None

    # Field validators (not one model validator) so that each problem names its own key.
    @field_validator("target_r")
    @classmethod
    def _below_init_r(cls, value: int, info: ValidationInfo) -> int:
        init_r = info.data.get("init_r")
        if init_r is not None and value >= init_r:
            raise ValueError(
                f"target_r ({value}) must be below init_r ({init_r}): AdaLoRA prunes ranks from init_r down to target_r"
            )
        return value

    @field_validator("tinit", "tfinal")
    @classmethod
    def _steps_or_fraction(cls, value: float, info: ValidationInfo) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(f"{value:g}: use a fraction of the run below 1, or a whole number of steps")
        tinit = info.data.get("tinit")
        if info.field_name == "tfinal" and tinit is not None and tinit < 1 and value < 1 and tinit + value >= 1:
            raise ValueError(
                f"tinit + tfinal = {tinit + value:g} of the run leaves no steps to allocate ranks in; lower them"
            )
        return value

    def steps(self, total: int) -> tuple[int, int]:
        """``tinit`` and ``tfinal`` in optimizer steps for a run of ``total`` steps."""

        def count(value: float) -> int:
            return int(value) if value >= 1 else int(round(value * total))

        return count(self.tinit), count(self.tfinal)


class AdaLoraMethod(ift.PeftMethod):
    name = "adalora"
    Config = AdaLoraSection
    config: AdaLoraSection
    label = "AdaLoRA"

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        c = self.config
        from peft import AdaLoraConfig

        # total_step is unknown until the trainer has planned its batches: a placeholder that allows any
        # schedule; on_optimizer_step sets the real one before the first rank update.
        # peft annotates lora_alpha as int, but only uses it in the float scale alpha / r: floats work.
        return AdaLoraConfig(
            init_r=c.init_r,
            target_r=c.target_r,
            lora_alpha=c.alpha,  # type: ignore[arg-type]
            lora_dropout=c.dropout,
            target_modules=c.target_modules,
            tinit=0,
            tfinal=0,
            deltaT=c.delta_t,
            beta1=c.beta1,
            beta2=c.beta2,
            orth_reg_weight=c.orth_reg_weight,
            total_step=PLACEHOLDER_STEPS,
            modules_to_save=with_head(c.modules_to_save, head),
            exclude_modules=head_pattern(head),
            task_type=task_type,
        )

    def describe(self) -> str:
        c = self.config

        def when(value: float) -> str:
            return f"{value:.0%}" if value < 1 else f"{int(value)} steps"

        return (
            f"AdaLoRA init_r={c.init_r} -> target_r={c.target_r}, alpha={c.alpha:g}, "
            f"tinit={when(c.tinit)}, tfinal={when(c.tfinal)}, delta_t={c.delta_t}, "
            f"orth_reg_weight={c.orth_reg_weight:g}, on {_targets_text(c.target_modules)}"
        )

    def on_optimizer_step(self, model: Any, step: int, total_steps: int) -> None:
        """Set the schedule from the run's step count (checked once), then update importance scores and prune
        ranks."""
        tuner = model.base_model
        config = tuner.peft_config[tuner.trainable_adapter_name]
        if config.total_step != total_steps:  # first update of this run (or of a resumed one)
            tinit, tfinal = self.config.steps(total_steps)
            if tinit >= total_steps - tfinal:
                raise ift.RecipeError(
                    [
                        ift.Problem(
                            f"{KEY}.tinit",
                            f"AdaLoRA's schedule (tinit = {tinit} steps, tfinal "
                            f"= {tfinal} steps) leaves no step to allocate ranks in a run of "
                            f"{total_steps} optimizer steps; lower model.peft.tinit / "
                            "model.peft.tfinal or train longer",
                        )
                    ]
                )
            config.total_step, config.tinit, config.tfinal = total_steps, tinit, tfinal
            if config.rank_pattern is None and step > total_steps - tfinal:
                config.rank_pattern = _rank_pattern_from_weights(tuner)  # resumed in the final phase
        tuner.update_and_allocate(step)

    def training_penalty(self, model: Any) -> Any:
        return adalora_penalty(model)


class IA3Section(ift.PeftMethodConfig):
    method: Literal["ia3"]
    target_modules: str | list[str] | None = Field(
        None,
        description="Modules whose activations are rescaled; "
        "default: peft's choice for the architecture (k, v, ffn out).",
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward layers (scaled on their input, not output)."
    )
    modules_to_save: list[str] | None = None

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


class IA3Method(ift.PeftMethod):
    name = "ia3"
    Config = IA3Section
    config: IA3Section
    label = "IA3"

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        c = self.config
        from peft import IA3Config

        return IA3Config(
            target_modules=c.target_modules,
            feedforward_modules=c.feedforward_modules,
            modules_to_save=with_head(c.modules_to_save, head),
            exclude_modules=head_pattern(head),
            task_type=task_type,
        )

    def describe(self) -> str:
        c = self.config
        ff = f"; feed-forward: {', '.join(c.feedforward_modules)}" if c.feedforward_modules else ""
        return f"IA3 on {_targets_text(c.target_modules)}{ff}"


class PrefixTuningSection(ift.PeftMethodConfig):
    method: Literal["prefix-tuning"]
    num_virtual_tokens: int = Field(20, gt=0, description="Trained key/value positions prepended at every layer.")
    projection: bool = Field(False, description="Produce the prefixes through a two-layer MLP (more stable).")
    projection_hidden_size: int | None = Field(
        None, gt=0, description="That MLP's width; default: the model's hidden size."
    )

    @field_validator("projection_hidden_size")
    @classmethod
    def _needs_projection(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("projection") is False:
            raise ValueError("is set but projection = false")
        return value


class PrefixTuningMethod(ift.PeftMethod):
    name = "prefix-tuning"
    Config = PrefixTuningSection
    config: PrefixTuningSection
    label = "prefix tuning"
    packing = False

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        c = self.config
        from peft import PrefixTuningConfig

        options: dict[str, Any] = {
            "num_virtual_tokens": c.num_virtual_tokens,
            "prefix_projection": c.projection,
            "task_type": task_type,
        }
        if c.projection:
            options["encoder_hidden_size"] = c.projection_hidden_size or _hidden_size(model)
        if head:
            options["modules_to_save"] = list(head)
        return PrefixTuningConfig(**options)

    def describe(self) -> str:
        c = self.config
        projection = f", MLP projection ({c.projection_hidden_size or 'hidden size'})" if c.projection else ""
        return f"prefix tuning, {c.num_virtual_tokens} virtual tokens per layer{projection}"


class PromptTuningSection(ift.PeftMethodConfig):
    method: Literal["prompt-tuning"]
    num_virtual_tokens: int = Field(20, gt=0, description="Trained embeddings prepended to the prompt.")
    init_text: str | None = Field(
        None,
        min_length=1,
        description="Start the virtual tokens from the embeddings of "
        "this text (repeated or cut to fit); default: random.",
    )


class PromptTuningMethod(ift.PeftMethod):
    name = "prompt-tuning"
    Config = PromptTuningSection
    config: PromptTuningSection
    label = "prompt tuning"
    packing = False

    def peft_config(self, model: Any, task_type: str, head: list[str]) -> Any:
        c = self.config
        from peft import PromptTuningConfig

        # RANDOM on purpose: peft's TEXT init reloads the tokenizer by name, which a byte-level or local
        # tokenizer does not have; apply_peft copies the text's embeddings in itc.
        return PromptTuningConfig(
            num_virtual_tokens=c.num_virtual_tokens,
            prompt_tuning_init="RANDOM",
            modules_to_save=list(head) or None,
            task_type=task_type,
        )

    def describe(self) -> str:
        c = self.config
        init = f"initialised from {c.init_text!r}" if c.init_text else "random init"
        return f"prompt tuning, {c.num_virtual_tokens} virtual tokens ({init})"

    def after_wrap(self, model: Any, *, task_type: str, tokenizer: Any = None) -> Any:
        if self.config.init_text:
            _init_prompt_from_text(model, self.config.init_text, tokenizer)
        if task_type == "CAUSAL_LM":  # logits line up with the input ids again, as for every other method
            model.register_forward_hook(_drop_virtual_positions, with_kwargs=True)
        return model


BUILTIN_METHODS: tuple[type[ift.PeftMethod], ...] = (
    LoraMethod,
    AdaLoraMethod,
    IA3Method,
    PrefixTuningMethod,
    PromptTuningMethod,
)


def adalora_penalty(model: Any) -> Any:
    """AdaLoRA's orthogonality penalty on its P and Q matrices (mean per trainable token), as peft adds it to
    ``outputs.loss``; None for any other model, outside training mode, or with ``orth_reg_weight = 0``."""
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


def _hidden_size(model: Any) -> int:
    config = model.config
    for name in ("hidden_size", "d_model", "n_embd"):
        if isinstance(getattr(config, name, None), int):
            return int(getattr(config, name))
    raise ift.RecipeError(
        [
            ift.Problem(
                f"{KEY}.projection_hidden_size",
                "cannot read the model's hidden size from its config: set projection_hidden_size",
            )
        ]
    )


def _init_prompt_from_text(model: Any, text: str, tokenizer: Any) -> None:
    import torch

    if tokenizer is None:
        raise ift.RecipeError(
            [
                ift.Problem(
                    f"{KEY}.init_text",
                    "this model adapter does not pass its tokenizer to apply_peft, so the text cannot be tokenized",
                )
            ]
        )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ift.RecipeError([ift.Problem(f"{KEY}.init_text", f"{text!r} tokenizes to no tokens")])
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
        output["logits"] = logits[:, logits.size(1) - inputs.size(1) :]
    return output


def _rank_pattern_from_weights(tuner: Any) -> dict[str, list[bool]]:
    """The kept ranks of each module, read from the zeros pruning left in ``lora_E`` (a run resumed after
    pruning ended has no rank pattern in memory)."""
    name = tuner.trainable_adapter_name
    return {n: (p.detach() != 0).view(-1).tolist() for n, p in tuner.model.named_parameters() if f"lora_E.{name}" in n}
