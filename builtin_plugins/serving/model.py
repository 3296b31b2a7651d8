"""The model behind ``ift serve``: a run directory's ``model/`` loaded through the run's own model adapter (a
peft adapter is merged into its base), its tokenizer, and the run's renderer rebuilt from ``resolved.json`` and
checked against the template hash in ``manifest.json`` (see :mod:`ift.builtin_plugins.inference.runs`).

Generation is a small decoding loop (greedy, or temperature / top-p sampling) over the model's KV cache, so
text can be streamed token by token and stop strings are honoured exactly. One model serves one request at a
time: :attr:`ServedModel.lock` is held for the whole of a generation.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins.inference.runs import build_renderer, conversation_prompt, open_run, stop_texts
from ift.builtin_plugins.inference.runs import context_length as _context_length

from .protocol import RequestError, Sampling

__all__ = ["Piece", "ServedModel", "build_renderer", "stop_texts"]


@dataclass
class Piece:
    """Text produced so far, as deltas: ``finish_reason`` is set on the last one."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None


class ServedModel:
    """Loads ``RUN_DIR/model`` and answers prompts; thread-safe through :attr:`lock`."""

    def __init__(self, run_dir: Path, host: Any, *, device: str = "auto", recipe_dir: Path | None = None) -> None:
        run = open_run(Path(run_dir), host, device=device, recipe_dir=recipe_dir, merge=True)
        model = run.model
        if getattr(model.config, "is_encoder_decoder", False) or not getattr(model, "can_generate", bool)():
            raise ift.RunError(f"ift serve decodes decoder-only language models; {run_dir} has a "
                               f"{type(run.model).__name__} (model adapter {run.adapter.name!r})")
        self.run_dir = run.run_dir
        self.renderer, self.tokenizer, self.model = run.renderer, run.tokenizer, run.model
        self.template_stops = run.stop()
        self.context_length = _context_length(self.model)
        # newer transformers name the KV cache argument ``cache``; older ones ``past_key_values``
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        self.lock = threading.Lock()
        bos = self.tokenizer.bos_token_id
        self._adds_bos = bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]

    # --- prompts -------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The run's template applied to the conversation, up to where the next assistant answer starts."""
        try:
            return conversation_prompt(self.renderer, [ift.Message(m["role"], m["content"]) for m in messages])
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
