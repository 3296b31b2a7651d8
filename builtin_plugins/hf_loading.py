"""Where a model adapter's Hugging Face model comes from and where it goes: a hub id or local folder, or a
config with random weights (tests, the quickstart); dtype and device; PEFT; a saved folder that plain
``transformers`` / ``peft`` load; greedy generation in batches. Shared by the ``causal-lm``, ``seq2seq`` and
``classifier`` adapters; plugin adapters for other model families can use it the same way (pass their
``AutoModelFor...`` class)."""

from __future__ import annotations

import atexit
import json
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

import ift
from ift.builtin_plugins.model_paths import resolve_model_path
from ift.builtin_plugins.peft_methods import PeftSection, apply_peft

BASE_FOLDER = "base_model"


class PretrainedModelConfig(ift.ComponentConfig):
    """The ``[model]`` keys that say which model to load and how."""

    name_or_path: str | None = Field(
        None,
        description="Hub id, local folder, a .gguf file, or 'package:NAME' (a model folder or GGUF file inside "
        "an installed package).",
    )
    from_config: dict[str, Any] | None = Field(
        None, description="Build a randomly initialised model: {model_type = 'llama', hidden_size = ...}."
    )
    tokenizer: str | None = Field(None, description="Tokenizer id/path, or 'byte-level' (no download).")
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    attn_implementation: str | None = Field(
        None,
        description="e.g. sdpa, eager, flash_attention_2. Unset: transformers' choice (the causal-lm adapter on a "
        "CPU turns sdpa into ift_sdpa, which attends each example of a packed row on its own).",
    )
    peft: PeftSection | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> PretrainedModelConfig:
        if (self.name_or_path is None) == (self.from_config is None):
            raise ValueError("set exactly one of name_or_path (a pretrained model) or from_config")
        if self.from_config is not None and "model_type" not in self.from_config:
            raise ValueError("from_config needs model_type (e.g. 'llama', 't5' or 'bert')")
        if self.from_config is not None and self.tokenizer is None:
            raise ValueError("a model built from_config needs tokenizer = 'byte-level' or a tokenizer path")
        return self


@dataclass
class LoadedModel:
    model: Any
    #: A folder holding the base weights when they exist nowhere else (built from a config, then wrapped
    #: with PEFT): :func:`save_model_folder` copies it beside the adapter.
    base_snapshot: Path | None = None


#: Why a pickle checkpoint holding more than tensors is refused (torch loads pickles with weights_only=True).
PICKLE_REFUSED = (
    "its weights are a pickle checkpoint (pytorch_model.bin / .pt) holding objects other than "
    "tensors, which could run code when loaded, so it is refused; save the model with "
    "save_pretrained(..., safe_serialization=True) to get model.safetensors"
)


def resolve_path(base_dir: Path, value: str, *, key: str = "model.name_or_path") -> str:
    """A local folder relative to the recipe when it exists, the model folder a ``package:NAME`` reference
    names, else the value as given (a hub id). Problems are reported against the recipe ``key``."""
    return resolve_model_path(value, base_dir, key=key)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_tokenizer(cfg: PretrainedModelConfig, base_dir: Path) -> Any:
    """The configured tokenizer as it comes (``model.tokenizer``, else the model's own), nothing added: adapters
    whose models need no EOS (encoders) set their special tokens themselves."""
    if cfg.tokenizer == "byte-level":
        from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

        return build_byte_tokenizer()
    from transformers import AutoTokenizer

    key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    source = resolve_path(base_dir, cfg.tokenizer or cfg.name_or_path or "", key=key)
    try:
        return AutoTokenizer.from_pretrained(source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ift.RunError(f"cannot load tokenizer {source!r} ({key}): {first_line(exc)}") from exc


def load_tokenizer(cfg: PretrainedModelConfig, base_dir: Path, *, fast_needed_for: str | None = None) -> Any:
    """The configured tokenizer, with an EOS and a pad token. ``fast_needed_for``: why the adapter needs a fast
    tokenizer (an error otherwise), or None."""
    tokenizer = open_tokenizer(cfg, base_dir)
    if fast_needed_for and not getattr(tokenizer, "is_fast", False):
        raise ift.RunError(f"{fast_needed_for} needs a fast tokenizer")
    if tokenizer.eos_token is None:
        raise ift.RunError("the tokenizer has no eos_token; the model could not learn to stop")
    if tokenizer.pad_token is None:
        # Safe: padding is masked by length, never by comparing ids, so EOS labels stay trained.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    cfg: PretrainedModelConfig,
    base_dir: Path,
    auto_class: Any,
    tokenizer: Any,
    *,
    task_type: str,
    config_defaults: dict[str, Any] | None = None,
    config_values: dict[str, Any] | None = None,
    ignore_mismatched_sizes: bool = False,
) -> LoadedModel:
    """Build or load the model with ``auto_class``, size its embeddings to the tokenizer, apply
    ``[model.peft]`` (peft's ``task_type``) and move it to the configured device. ``config_defaults`` are
    extra defaults for a model built from a config (e.g. an encoder-decoder's ``decoder_start_token_id``);
    ``config_values`` are config entries the adapter decides, for a built and a pretrained model alike (a
    classifier's label set), and ``ignore_mismatched_sizes`` lets them replace a pretrained head of another
    size."""
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
        defaults = {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            **(config_defaults or {}),
        }
        for key, value in defaults.items():
            options.setdefault(key, value)
        try:
            config = AutoConfig.for_model(model_type, **options, **(config_values or {}))
            model = auto_class.from_config(config, **kwargs)
        except (ValueError, TypeError, KeyError) as exc:
            raise ift.RecipeError([ift.Problem("model.from_config", first_line(exc))]) from exc
    else:
        source = resolve_path(base_dir, cfg.name_or_path or "")
        pretrained = {**(config_values or {}), **kwargs}
        if ignore_mismatched_sizes:
            pretrained["ignore_mismatched_sizes"] = True
        try:
            model = auto_class.from_pretrained(
                source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **pretrained
            )
        except pickle.UnpicklingError:
            raise ift.RunError(f"cannot load model {source!r} (model.name_or_path): {PICKLE_REFUSED}") from None
        except (OSError, ValueError) as exc:
            raise ift.RunError(f"cannot load model {source!r} (model.name_or_path): {first_line(exc)}") from exc
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    snapshot = None
    if cfg.peft is not None:
        if cfg.from_config is not None:
            # A random base exists nowhere else: keep a copy to save beside the adapter.
            snapshot = Path(tempfile.mkdtemp(prefix="ift-base-"))
            atexit.register(shutil.rmtree, snapshot, True)  # needed only until the run saves its model
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
    copy. On the configured device, in eval mode; a peft model stays unmerged. A ``config.json`` beside an adapter
    (the classifier writes its label set there) configures the base model it is applied to."""
    from transformers import AutoConfig, AutoTokenizer

    from ift.builtin_plugins.inference.quantize import QUANTIZATION_FILE, load_quantized_model
    from ift.runtime import select_device

    path = Path(path)
    remote = {"trust_remote_code": cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **remote)
    except (OSError, ValueError) as exc:
        raise ift.RunError(f"cannot load the tokenizer saved in {path}: {first_line(exc)}") from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": cfg.dtype, **remote}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    adapter_config = path / "adapter_config.json"
    try:
        if (path / QUANTIZATION_FILE).is_file():
            return load_quantized_model(path, auto_class, **remote), tokenizer
        if adapter_config.is_file():
            base = str(json.loads(adapter_config.read_text(encoding="utf-8"))["base_model_name_or_path"])
            if (path / BASE_FOLDER).is_dir():  # the folder's own base wins: the run folder may have been moved
                base = str(path / BASE_FOLDER)
            elif (path / base).is_dir():  # relative to the adapter folder, as older runs wrote it
                base = str(path / base)
            if (path / "config.json").is_file():
                kwargs["config"] = AutoConfig.from_pretrained(str(path), **remote)
                # A head sized for this config (the classifier's labels) replaces the base's; the adapter
                # brings its trained weights (peft saves the head with the adapter).
                kwargs["ignore_mismatched_sizes"] = True
            model = auto_class.from_pretrained(base, **kwargs)
            if len(tokenizer) > model.get_input_embeddings().num_embeddings:
                model.resize_token_embeddings(len(tokenizer))  # as load_model did before applying peft
            model = ift.load_peft_model(model, path)
        else:
            model = auto_class.from_pretrained(str(path), **kwargs)
    except pickle.UnpicklingError:
        raise ift.RunError(f"cannot load the model saved in {path}: {PICKLE_REFUSED}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ift.RunError(f"cannot load the model saved in {path}: {first_line(exc)}") from exc
    return model.to(select_device(cfg.device)).eval(), tokenizer


def describe_origin(
    cfg: PretrainedModelConfig, family: str = "", clauses: Sequence[str] = (), base_dir: Path | None = None
) -> dict[str, Any]:
    """Manifest facts: where the model came from, its tokenizer, and a one-line summary with the PEFT
    method and its key settings; ``clauses`` are an adapter's own facts, put before the PEFT method. With
    ``base_dir`` (the recipe's folder), a GGUF model is described by its file: name, size, sha256, quantization
    (``gguf`` in the facts) and the converted folder the run loads."""
    from ift.builtin_plugins.peft_methods import describe_peft, provenance

    kind = f"{family} " if family else ""
    gguf = _gguf_source(cfg.name_or_path, base_dir)
    if cfg.from_config is not None:
        summary = (
            f"a {cfg.from_config['model_type']} {kind}model built from model.from_config with RANDOM "
            "weights (no pretrained model is used)"
        )
    elif gguf is not None:
        summary = (
            f"pretrained {gguf['architecture']} {kind}model from the GGUF file {gguf['file']} "
            f"({gguf['label']}; {gguf['quantization']}, {gguf['size'] / 1e6:.1f} MB, sha256 "
            f"{gguf['sha256'][:12]}...), dequantized to float32 in {gguf['folder']}"
        )
    else:
        summary = f"pretrained {kind}{cfg.name_or_path}"
    tokenizer = cfg.tokenizer or cfg.name_or_path
    if tokenizer == "byte-level":
        tokenizer = "byte-level tokenizer built in (no download)"
    elif gguf is not None and not cfg.tokenizer:
        tokenizer = f"the GGUF file's own (vocabulary and chat template from {gguf['file']})"
    facts: dict[str, Any] = {
        "origin": cfg.name_or_path or "from_config",
        "tokenizer": cfg.tokenizer or cfg.name_or_path,
        "peft": cfg.peft.method if cfg.peft else None,
        "peft_method": provenance(cfg.peft),
        "summary": "; ".join([summary, f"tokenizer: {tokenizer}", *clauses, describe_peft(cfg.peft)]),
    }
    if gguf is not None:
        facts["gguf"] = gguf
    return facts


def _gguf_source(name_or_path: str | None, base_dir: Path | None) -> dict[str, Any] | None:
    """The GGUF facts of a model that came from a GGUF file (None for any other model)."""
    if not name_or_path or base_dir is None:
        return None
    from ift.builtin_plugins.gguf import converted_source

    folder = Path(resolve_path(base_dir, name_or_path))
    source = converted_source(folder) if folder.is_dir() else None
    if source is None:
        return None
    keep = (
        "file",
        "label",
        "path",
        "size",
        "sha256",
        "architecture",
        "quantization",
        "file_type",
        "name",
        "context_length",
        "tensor_types",
        "tokenizer_pre",
    )
    return {**{k: source.get(k) for k in keep}, "folder": str(folder)}


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool = False) -> tuple[Any, Any]:
    """``input_ids`` and ``attention_mask`` of token id lists padded with ``pad_id`` to the longest, on the right
    or (``left``: a decoder-only model generates after the last position of every row) on the left."""
    import torch

    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        at = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, at] = torch.tensor(list(row), dtype=torch.long)
        mask[i, at] = 1
    return ids, mask


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int,
    stop: Sequence[str],
    generate_batch: Callable[[Sequence[str], list[int]], list[list[int]]],
) -> list[str]:
    """Greedy continuations of ``prompts``, the loop the generating adapters share: batches of ``batch_size``,
    the model in eval mode without gradients (its mode restored afterwards), each continuation decoded up to its
    first stop id (EOS, or a ``stop`` string that is a single token) and cut at the first ``stop`` string in its
    text, then stripped. ``generate_batch(prompts, stop_ids)`` is the model-specific part: it runs the model on one
    batch, passing ``stop_ids`` as ``eos_token_id``, and returns each prompt's newly generated ids."""
    import torch

    stop_ids = {tokenizer.eos_token_id}
    for s in stop:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            stop_ids.add(ids[0])
    ordered = sorted(stop_ids)
    outputs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                for row in generate_batch(prompts[start : start + batch_size], ordered):
                    cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
                    text = tokenizer.decode(row[:cut], skip_special_tokens=True)
                    for s in stop:
                        if s and s in text:
                            text = text[: text.index(s)]
                    outputs.append(text.strip())
    finally:
        model.train(was_training)
    return outputs


def enable_gradient_checkpointing(model: Any) -> None:
    """Activation checkpointing of a transformers model (under peft's wrapper, the base model's layers; LoRA's
    layers inside them are recomputed too). Non-reentrant checkpoints: the gradient reaches trainable weights
    inside a layer even when its input does not require one (frozen embeddings under LoRA), so peft's
    input-grad hook is not needed."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ift.RecipeError(
            [
                ift.Problem(
                    "trainer.gradient_checkpointing",
                    f"{type(base).__name__} does not support gradient checkpointing; set it to false",
                )
            ]
        )
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
