"""Where a model adapter's Hugging Face model comes from and where it goes: a hub id or local folder, or a
config with random weights (tests, the quickstart); dtype and device; PEFT; a saved folder that plain
``transformers`` / ``peft`` load. Shared by the ``causal-lm`` and ``seq2seq`` adapters; plugin adapters for
other model families can use it the same way (pass their ``AutoModelFor...`` class)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

import ift
from ift.builtin_plugins.peft_methods import PeftSection, apply_peft
from ift.errors import Problem

BASE_FOLDER = "base_model"


class PretrainedModelConfig(ift.ComponentConfig):
    """The ``[model]`` keys that say which model to load and how."""

    name_or_path: str | None = Field(None, description="Hub id or local folder of a pretrained model.")
    from_config: dict[str, Any] | None = Field(
        None, description="Build a randomly initialised model: {model_type = 'llama', hidden_size = ...}.")
    tokenizer: str | None = Field(None, description="Tokenizer id/path, or 'byte-level' (no download).")
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager, flash_attention_2.")
    peft: PeftSection | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> PretrainedModelConfig:
        if (self.name_or_path is None) == (self.from_config is None):
            raise ValueError("set exactly one of name_or_path (a pretrained model) or from_config")
        if self.from_config is not None and "model_type" not in self.from_config:
            raise ValueError("from_config needs model_type (e.g. 'llama' or 't5')")
        if self.from_config is not None and self.tokenizer is None:
            raise ValueError("a model built from_config needs tokenizer = 'byte-level' or a tokenizer path")
        return self


@dataclass
class LoadedModel:
    model: Any
    #: A folder holding the base weights when they exist nowhere else (built from a config, then wrapped
    #: with PEFT): :func:`save_model_folder` copies it beside the adapter.
    base_snapshot: Path | None = None


def resolve_path(base_dir: Path, value: str) -> str:
    """A local folder relative to the recipe when it exists, else the value as given (a hub id)."""
    local = Path(value).expanduser()
    if not local.is_absolute():
        local = base_dir / local
    return str(local) if local.exists() else value


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_tokenizer(cfg: PretrainedModelConfig, base_dir: Path, *, fast_needed_for: str | None = None) -> Any:
    """The configured tokenizer, with a pad token. ``fast_needed_for``: why the adapter needs a fast
    tokenizer (an error otherwise), or None."""
    if cfg.tokenizer == "byte-level":
        from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

        tokenizer = build_byte_tokenizer()
    else:
        from transformers import AutoTokenizer

        source = resolve_path(base_dir, cfg.tokenizer or cfg.name_or_path or "")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision,
                                                      trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ift.RunError(f"cannot load tokenizer {source!r} (model.tokenizer / "
                               f"model.name_or_path): {first_line(exc)}") from exc
    if fast_needed_for and not getattr(tokenizer, "is_fast", False):
        raise ift.RunError(f"{fast_needed_for} needs a fast tokenizer")
    if tokenizer.eos_token is None:
        raise ift.RunError("the tokenizer has no eos_token; the model could not learn to stop")
    if tokenizer.pad_token is None:
        # Safe: padding is masked by length, never by comparing ids, so EOS labels stay trained.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: PretrainedModelConfig, base_dir: Path, auto_class: Any, tokenizer: Any, *, task_type: str,
               config_defaults: dict[str, Any] | None = None) -> LoadedModel:
    """Build or load the model with ``auto_class``, size its embeddings to the tokenizer, apply
    ``[model.peft]`` (peft's ``task_type``) and move it to the configured device. ``config_defaults`` are
    extra defaults for a model built from a config (e.g. an encoder-decoder's ``decoder_start_token_id``)."""
    import torch
    from transformers import AutoConfig

    from ift.runtime import bf16_supported, select_device

    device = select_device(cfg.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype)
    if dtype is None:  # auto: bf16 weights only for adapters on a bf16 GPU; full fine-tuning keeps fp32
        dtype = torch.bfloat16 if (cfg.peft and bf16_supported(device)) else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.from_config is not None:
        options = dict(cfg.from_config)
        model_type = options.pop("model_type")
        defaults = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                    "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
                    **(config_defaults or {})}
        for key, value in defaults.items():
            options.setdefault(key, value)
        try:
            config = AutoConfig.for_model(model_type, **options)
            model = auto_class.from_config(config, **kwargs)
        except (ValueError, TypeError, KeyError) as exc:
            raise ift.RecipeError([Problem("model.from_config", first_line(exc))]) from exc
    else:
        source = resolve_path(base_dir, cfg.name_or_path or "")
        try:
            model = auto_class.from_pretrained(source, revision=cfg.revision,
                                               trust_remote_code=cfg.trust_remote_code, **kwargs)
        except (OSError, ValueError) as exc:
            raise ift.RunError(f"cannot load model {source!r} (model.name_or_path): {first_line(exc)}") from exc
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    snapshot = None
    if cfg.peft is not None:
        if cfg.from_config is not None:
            # A random base exists nowhere else: keep a copy to save beside the adapter.
            snapshot = Path(tempfile.mkdtemp(prefix="ift-base-"))
            model.save_pretrained(str(snapshot))
        model = apply_peft(model, cfg.peft, task_type=task_type, tokenizer=tokenizer)
    return LoadedModel(model.to(device), snapshot)


def save_model_folder(model: Any, tokenizer: Any, path: Path, base_snapshot: Path | None) -> None:
    """Model (or adapter) and tokenizer in ``path``; a base built from a config goes to ``path/base_model``
    and the adapter's config points there by a relative path, so the run directory can be moved:
    ``PeftModel.from_pretrained(AutoModelFor...from_pretrained("<model>/base_model"), "<model>")``."""
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    if base_snapshot is not None:
        shutil.copytree(base_snapshot, path / BASE_FOLDER)
        tokenizer.save_pretrained(str(path / BASE_FOLDER))
        config_file = path / "adapter_config.json"
        data = json.loads(config_file.read_text())
        data["base_model_name_or_path"] = BASE_FOLDER
        config_file.write_text(json.dumps(data, indent=2))


def load_saved_model(cfg: PretrainedModelConfig, path: Path, auto_class: Any) -> tuple[Any, Any]:
    """Model and tokenizer from a folder :func:`save_model_folder` wrote: a full model, a peft adapter with
    its base in ``base_model/`` or at its ``base_model_name_or_path``, or an ``ift export --quantize int8``
    copy. On the configured device, in eval mode; a peft model stays unmerged."""
    from transformers import AutoTokenizer

    from ift.builtin_plugins.inference.quantize import QUANTIZATION_FILE, load_quantized_model
    from ift.runtime import select_device

    path = Path(path)
    remote = {"trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **remote)
    except (OSError, ValueError) as exc:
        raise ift.RunError(f"cannot load the tokenizer saved in {path}: {first_line(exc)}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": cfg.dtype, **remote}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    adapter_config = path / "adapter_config.json"
    try:
        if (path / QUANTIZATION_FILE).is_file():
            return load_quantized_model(path, auto_class, **remote), tokenizer
        if adapter_config.is_file():
            from peft import PeftModel

            base = str(json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"])
            if (path / base).is_dir():  # relative to the adapter folder, as save_model_folder writes it
                base = str(path / base)
            model = auto_class.from_pretrained(base, **kwargs)
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))  # as load_model did before applying peft
            model = PeftModel.from_pretrained(model, str(path))
        else:
            model = auto_class.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ift.RunError(f"cannot load the model saved in {path}: {first_line(exc)}") from exc
    return model.to(select_device(cfg.device)).eval(), tokenizer


def describe_origin(cfg: PretrainedModelConfig, family: str = "") -> dict[str, Any]:
    """Manifest facts: where the model came from, its tokenizer, and a one-line summary with the PEFT
    method and its key settings."""
    from ift.builtin_plugins.peft_methods import describe_peft

    kind = f"{family} " if family else ""
    if cfg.from_config is not None:
        summary = (f"a {cfg.from_config['model_type']} {kind}model built from model.from_config with RANDOM "
                   "weights (no pretrained model is used)")
    else:
        summary = f"pretrained {kind}{cfg.name_or_path}"
    tokenizer = cfg.tokenizer or cfg.name_or_path
    if tokenizer == "byte-level":
        tokenizer = "byte-level tokenizer built in (no download)"
    return {"origin": cfg.name_or_path or "from_config", "tokenizer": cfg.tokenizer or cfg.name_or_path,
            "peft": cfg.peft.method if cfg.peft else None,
            "summary": f"{summary}; tokenizer: {tokenizer}; {describe_peft(cfg.peft)}"}
