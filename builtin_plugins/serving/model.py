"""The model behind ``ift serve``: a run directory's ``model/`` (plain transformers, or a peft adapter on its
base), its tokenizer, and the run's own renderer rebuilt from ``resolved.json``.

Generation is a small decoding loop (greedy, or temperature / top-p sampling) over the model's KV cache, so
text can be streamed token by token and stop strings are honoured exactly. One model serves one request at a
time: :attr:`ServedModel.lock` is held for the whole of a generation.
"""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ift

from .protocol import RequestError, Sampling


@dataclass
class Piece:
    """Text produced so far, as deltas: ``finish_reason`` is set on the last one."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None


def build_renderer(run_dir: Path, host: Any, recipe_dir: Path | None = None) -> Any:
    """The run's renderer, rebuilt from the ``template`` section of ``resolved.json`` through the plugin host.

    A template file path is relative to the recipe's folder: ``recipe_dir`` when given, else the run
    directory, else the current folder.
    """
    try:
        resolved = json.loads((run_dir / "resolved.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ift.RunError(f"{run_dir} is not an ift run directory (cannot read resolved.json: {exc})") from None
    section = dict(resolved["template"])
    registered = host.get("renderer", section.pop("name"))
    config = registered.cls.Config(**section)
    candidates = [recipe_dir] if recipe_dir else [run_dir, Path.cwd()]
    base_dir = candidates[0]
    path = section.get("path")
    if isinstance(path, str) and not Path(path).is_absolute():
        base_dir = next((c for c in candidates if (c / path).is_file()), candidates[0])
    try:
        return registered.cls(config, base_dir=base_dir, prepare_jinja_env=host.prepare_jinja_env)
    except ift.RecipeError as exc:
        raise ift.RunError(f"cannot rebuild the run's template ({exc}); if it is a file next to the recipe, "
                           "pass --recipe-dir") from None


def stop_texts(renderer: Any) -> list[str]:
    """What the template writes after an answer inside the trained span (EOS, ``<|im_end|>``...)."""
    probe = "\u2402probe"
    record = ift.InstructionRecord("serve-probe", "serve", [ift.Message("user", "hi"),
                                                             ift.Message("assistant", probe)])
    trained = [s.text for s in renderer.render(record) if s.trainable]
    if trained and probe in trained[-1]:
        suffix = trained[-1].split(probe, 1)[1].strip()
        return [suffix] if suffix else []
    return []


class ServedModel:
    """Loads ``RUN_DIR/model`` and answers prompts; thread-safe through :attr:`lock`."""

    def __init__(self, run_dir: Path, host: Any, *, device: str = "auto", recipe_dir: Path | None = None) -> None:
        from transformers import AutoTokenizer

        self.run_dir = Path(run_dir)
        model_dir = self.run_dir / "model"
        if not model_dir.is_dir():
            raise ift.RunError(f"{self.run_dir} has no model/ folder (did the run complete?)")
        self.renderer = build_renderer(self.run_dir, host, recipe_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.renderer.bind(self.tokenizer)
        self.template_stops = stop_texts(self.renderer)
        self.model = self._load_model(model_dir, device)
        self.context_length = _context_length(self.model)
        # newer transformers name the KV cache argument ``cache``; older ones ``past_key_values``
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        self.lock = threading.Lock()
        bos = self.tokenizer.bos_token_id
        self._adds_bos = bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]

    @staticmethod
    def _load_model(model_dir: Path, device: str) -> Any:
        from transformers import AutoModelForCausalLM

        from ift.runtime import select_device

        adapter_config = model_dir / "adapter_config.json"
        if adapter_config.is_file():
            from peft import PeftModel

            base = model_dir / "base_model"
            base_path = str(base) if base.is_dir() else json.loads(adapter_config.read_text())[
                "base_model_name_or_path"]
            adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype="auto"),
                                                str(model_dir))
            model: Any = adapted.merge_and_unload()  # plain weights: faster decoding, same outputs
        else:
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
        return model.to(select_device(device)).eval()

    # --- prompts -------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The run's template applied to the conversation, up to where the next assistant answer starts."""
        turns = [ift.Message(m["role"], m["content"]) for m in messages] + [ift.Message("assistant", "")]
        record = ift.InstructionRecord("request", "serve", turns)
        try:
            return self.renderer.prompt(record)
        except ift.IftError as exc:
            raise RequestError(f"the run's template cannot render these messages: {exc}",
                               param="messages") from None

    def encode(self, prompt: str) -> list[int]:
        """Token ids exactly as in training: no special tokens added, except a BOS the tokenizer expects."""
        ids: list[int] = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if self._adds_bos and not prompt.startswith(self.tokenizer.bos_token or "\0"):
            ids.insert(0, self.tokenizer.bos_token_id)
        return ids

    # --- generation ----------------------------------------------------------------------------

    def generate(self, ids: list[int], sampling: Sampling, *, template_stops: bool) -> Iterator[Piece]:
        """Decode after ``ids``, yielding text deltas; the caller holds :attr:`lock`.

        Stops at EOS, a one-token stop string, or a stop text (never included in the output), or after
        ``sampling.max_tokens`` tokens (``finish_reason = "length"``).
        """
        import torch

        if not ids:
            raise RequestError("the prompt is empty after tokenizing")
        budget = min(sampling.max_tokens, self.context_length - len(ids))
        if budget < 1:
            raise RequestError(f"the prompt is {len(ids)} tokens; this model's context is {self.context_length} "
                               "tokens", param="messages")
        stops = list(sampling.stop) + (self.template_stops if template_stops else [])
        stop_ids = {self.tokenizer.eos_token_id}
        for text in stops:
            one = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(one) == 1 and text in self.tokenizer.all_special_tokens:
                stop_ids.add(one[0])
        stops = [s for s in stops if s not in self.tokenizer.all_special_tokens]
        hold = max((len(s) for s in stops), default=1) - 1  # a stop text may still be forming
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device)
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()
        produced: list[int] = []
        sent = 0
        past = None
        inputs = torch.tensor([ids], device=device)
        with torch.no_grad():
            while True:
                out = self.model(input_ids=inputs, use_cache=True, **{self._cache_arg: past})
                past = getattr(out, self._cache_arg)
                token = _pick(out.logits[0, -1].float(), sampling, generator)
                counted = len(produced) + 1  # the stop token is generated too, but never shown
                if token in stop_ids:
                    finish: str | None = "stop"
                else:
                    produced.append(token)
                    finish = "length" if len(produced) >= budget else None
                text = str(self.tokenizer.decode(produced, skip_special_tokens=True))
                cut = min((text.find(s) for s in stops if s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                if finish is not None:
                    yield Piece(text[sent:], counted, finish)
                    return
                # part of a multi-byte character decodes as U+FFFD until the rest arrives: wait for it
                ready = min(len(text) - hold, len(text.rstrip("\ufffd")))
                if ready > sent:
                    yield Piece(text[sent:ready], counted)
                    sent = ready
                inputs = torch.tensor([[token]], device=device)


def _pick(logits: Any, sampling: Sampling, generator: Any) -> int:
    import torch

    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1:
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < sampling.top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _context_length(model: Any) -> int:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30
