"""The ``causal-lm`` model adapter: any ``AutoModelForCausalLM`` by hub id or local path, or one built
from a config (tests and the quickstart), fully fine-tuned or with LoRA through ``peft``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

import ift
from ift.builtin_plugins.peft_methods import PeftSection, apply_peft
from ift.errors import Problem


class CausalLMConfig(ift.ComponentConfig):
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
    def _one_origin(self) -> CausalLMConfig:
        if (self.name_or_path is None) == (self.from_config is None):
            raise ValueError("set exactly one of name_or_path (a pretrained model) or from_config")
        if self.from_config is not None and "model_type" not in self.from_config:
            raise ValueError("from_config needs model_type (e.g. 'llama')")
        if self.from_config is not None and self.tokenizer is None:
            raise ValueError("a model built from_config needs tokenizer = 'byte-level' or a tokenizer path")
        return self


class CausalLMAdapter(ift.ModelAdapter):
    """Decoder-only language models. Loss is taken on trainable segments only; the token ids used for
    training are exactly those of tokenizing the whole rendered text."""

    name = "causal-lm"
    Config = CausalLMConfig
    config: CausalLMConfig

    # --- loading -------------------------------------------------------------------------------

    def _path(self, value: str) -> str:
        local = Path(value).expanduser()
        if not local.is_absolute():
            local = self.base_dir / local
        return str(local) if local.exists() else value

    def load_tokenizer(self) -> Any:
        cfg = self.config
        if cfg.tokenizer == "byte-level":
            from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

            tokenizer = build_byte_tokenizer()
        else:
            from transformers import AutoTokenizer

            source = self._path(cfg.tokenizer or cfg.name_or_path or "")
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, revision=cfg.revision,
                                                          trust_remote_code=cfg.trust_remote_code)
            except (OSError, ValueError) as exc:
                raise ift.RunError(f"cannot load tokenizer {source!r} (model.tokenizer / "
                                   f"model.name_or_path): {_first_line(exc)}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise ift.RunError("causal-lm needs a fast tokenizer (character offsets are used to place the "
                               "trainable boundary exactly)")
        if tokenizer.eos_token is None:
            raise ift.RunError("the tokenizer has no eos_token; the model could not learn to stop")
        if tokenizer.pad_token is None:
            # Safe: padding is masked by length, never by comparing ids, so EOS labels stay trained.
            tokenizer.pad_token = tokenizer.eos_token
        self._adds_bos = _adds_bos(tokenizer)
        return tokenizer

    def load_model(self, tokenizer: Any) -> Any:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from ift.runtime import bf16_supported, select_device

        cfg = self.config
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
            options.setdefault("vocab_size", len(tokenizer))
            options.setdefault("pad_token_id", tokenizer.pad_token_id)
            options.setdefault("eos_token_id", tokenizer.eos_token_id)
            options.setdefault("bos_token_id", tokenizer.bos_token_id)
            try:
                config = AutoConfig.for_model(model_type, **options)
                model = AutoModelForCausalLM.from_config(config, **kwargs)
            except (ValueError, TypeError, KeyError) as exc:
                raise ift.RecipeError([Problem("model.from_config", _first_line(exc))]) from exc
        else:
            source = self._path(cfg.name_or_path or "")
            try:
                model = AutoModelForCausalLM.from_pretrained(source, revision=cfg.revision,
                                                             trust_remote_code=cfg.trust_remote_code, **kwargs)
            except (OSError, ValueError) as exc:
                raise ift.RunError(f"cannot load model {source!r} (model.name_or_path): "
                                   f"{_first_line(exc)}") from exc
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        if cfg.peft is not None:
            if cfg.from_config is not None:
                # A random base exists nowhere else: keep a copy to save beside the adapter.
                self._base_snapshot = Path(tempfile.mkdtemp(prefix="ift-base-"))
                model.save_pretrained(str(self._base_snapshot))
            model = apply_peft(model, cfg.peft, task_type="CAUSAL_LM")
        return model.to(device)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.from_config is not None:
            summary = (f"a {cfg.from_config['model_type']} model built from model.from_config with RANDOM weights "
                       "(no pretrained model is used)")
        else:
            summary = f"pretrained {cfg.name_or_path}"
        tokenizer = cfg.tokenizer or cfg.name_or_path
        if tokenizer == "byte-level":
            tokenizer = "byte-level tokenizer built in (no download)"
        method = f", {cfg.peft.method} r={cfg.peft.r}" if cfg.peft else ", full fine-tuning"
        return {"origin": cfg.name_or_path or "from_config", "tokenizer": cfg.tokenizer or cfg.name_or_path,
                "summary": f"{summary}; tokenizer: {tokenizer}{method}"}

    # --- tokenizing ----------------------------------------------------------------------------

    def encode(self, tokenizer: Any, segments: Sequence[ift.Segment], *, source: str,
               record_id: str) -> ift.EncodedExample:
        text = "".join(s.text for s in segments)
        trainable = bytearray(len(text))
        pos = 0
        for seg in segments:
            if seg.trainable:
                trainable[pos:pos + len(seg.text)] = b"\x01" * len(seg.text)
            pos += len(seg.text)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        labels = [tid if end > start and any(trainable[start:end]) else -100
                  for tid, (start, end) in zip(ids, enc["offset_mapping"], strict=True)]
        if getattr(self, "_adds_bos", False) and not text.startswith(tokenizer.bos_token or "\0"):
            ids.insert(0, tokenizer.bos_token_id)
            labels.insert(0, -100)
        return ift.EncodedExample(ids, labels, source, record_id)

    supports_packing = True

    def collate(self, tokenizer: Any, examples: Sequence[ift.EncodedExample]) -> dict[str, Any]:
        import torch

        width = max(len(e.input_ids) for e in examples)
        pad = tokenizer.pad_token_id
        input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            input_ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            attention[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
                "real_tokens": attention.sum(), "loss_tokens": (labels[:, 1:] != -100).sum(),
                "num_examples": torch.tensor(len(examples)),
                "record_ids": [e.record_id for e in examples]}

    def collate_packed(self, tokenizer: Any, rows: Sequence[Sequence[ift.EncodedExample]]) -> dict[str, Any]:
        import torch

        width = max(sum(len(e.input_ids) for e in row) for row in rows)
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        real = 0
        for r, row in enumerate(rows):
            pos = 0
            for e in row:
                n = len(e.input_ids)
                input_ids[r, pos:pos + n] = torch.tensor(e.input_ids)
                labels[r, pos:pos + n] = torch.tensor(e.labels)
                labels[r, pos] = -100  # an example's first token is never predicted from the one before it
                positions[r, pos:pos + n] = torch.arange(n)
                pos += n
            real += pos
            positions[r, pos:] = torch.arange(width - pos)  # padding tail: a separate sequence, no labels
        # No attention_mask: transformers then derives a block-diagonal causal mask from the position
        # resets (varlen kernels with flash attention), so attention never crosses examples.
        return {"input_ids": input_ids, "position_ids": positions, "labels": labels,
                "real_tokens": torch.tensor(real), "loss_tokens": (labels[:, 1:] != -100).sum(),
                "num_examples": torch.tensor(sum(len(row) for row in rows)),
                "record_ids": [e.record_id for row in rows for e in row]}

    def loss_sum(self, model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        import torch.nn.functional as F

        inputs = {"input_ids": batch["input_ids"], "use_cache": False}
        if "position_ids" in batch:
            inputs["position_ids"] = batch["position_ids"]
        else:
            inputs["attention_mask"] = batch["attention_mask"]
        logits = model(**inputs).logits
        labels = batch["labels"][:, 1:]
        logits = logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=-100, reduction="sum")
        return loss, (labels != -100).sum()

    # --- generating and saving -----------------------------------------------------------------

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int,
                 batch_size: int, stop: Sequence[str] = ()) -> list[str]:
        import torch

        device = next(model.parameters()).device
        stop_ids = {tokenizer.eos_token_id}
        for s in stop:
            ids = tokenizer(s, add_special_tokens=False)["input_ids"]
            if len(ids) == 1:
                stop_ids.add(ids[0])
        outputs: list[str] = []
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                encoded = [self.encode(tokenizer, [ift.Segment(p, False)], source="", record_id="").input_ids
                           for p in chunk]
                width = max(len(e) for e in encoded)
                ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, e in enumerate(encoded):  # left padding for generation
                    ids[i, width - len(e):] = torch.tensor(e)
                    mask[i, width - len(e):] = 1
                with torch.no_grad():
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=sorted(stop_ids), pad_token_id=tokenizer.pad_token_id)
                for row in out[:, width:].tolist():
                    cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
                    text = tokenizer.decode(row[:cut], skip_special_tokens=True)
                    for s in stop:
                        if s and s in text:
                            text = text[: text.index(s)]
                    outputs.append(text.strip())
        finally:
            model.train(was_training)
        return outputs

    def save(self, model: Any, tokenizer: Any, path: Path) -> None:
        target = model
        if hasattr(target, "generation_config") and target.generation_config is not None:
            target.generation_config.pad_token_id = tokenizer.pad_token_id
        target.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
        snapshot = getattr(self, "_base_snapshot", None)
        if snapshot is not None:
            # The base was built from a config: keep it beside the adapter so peft can load both.
            shutil.copytree(snapshot, path / "base_model")
            tokenizer.save_pretrained(str(path / "base_model"))
            _rewrite_base_path(path, "base_model")


def _rewrite_base_path(path: Path, relative: str) -> None:
    import json

    config_file = path / "adapter_config.json"
    data = json.loads(config_file.read_text())
    # Relative on purpose: the run directory can be moved. Load with
    # PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("<model>/base_model"), "<model>").
    data["base_model_name_or_path"] = relative
    config_file.write_text(json.dumps(data, indent=2))


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(with_special) and with_special[0] == bos


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@ift.hookimpl
def ift_register_model_adapters() -> list[type]:
    return [CausalLMAdapter]
