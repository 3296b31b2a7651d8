"""The model behind ``ift serve``: a run directory's ``model/`` loaded through the run's own model adapter (a
peft adapter is merged into its base), its tokenizer, and the run's renderer rebuilt from ``resolved.json`` and
checked against the template hash in ``manifest.json`` (see :mod:`ift.builtin_plugins.inference.runs`).

Generation is a small decoding loop (greedy, or temperature / top-p sampling) over the model's KV cache, so
text can be streamed token by token and stop strings are honoured exactly; requests waiting together are
decoded as one batch (see :mod:`.engine`).
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any

import ift
from ift.builtin_plugins.inference.runs import build_renderer, conversation_prompt, open_run, stop_texts
from ift.builtin_plugins.inference.runs import context_length as _context_length

from .decoding import Piece, RowDecoder
from .engine import BatchEngine, Job
from .protocol import RequestError, Sampling

__all__ = ["Piece", "ServedModel", "build_renderer", "stop_texts"]


class ServedModel:
    """Loads ``RUN_DIR/model``; renders and encodes prompts and makes the jobs :class:`~.engine.BatchEngine`
    decodes (the engine's worker is the only thread that runs the model)."""

    def __init__(self, run_dir: Path, host: Any, *, device: str = "auto", recipe_dir: Path | None = None) -> None:
        run = open_run(Path(run_dir), host, device=device, recipe_dir=recipe_dir, merge=True)
        model = run.model
        if getattr(model.config, "is_encoder_decoder", False) or not getattr(model, "can_generate", bool)():
            raise ift.RunError(
                f"ift serve decodes decoder-only language models; {run_dir} has a "
                f"{type(run.model).__name__} (model adapter {run.adapter.name!r})"
            )
        self.run_dir = run.run_dir
        self.renderer, self.tokenizer, self.model = run.renderer, run.tokenizer, run.model
        self.template_stops = run.stop()
        self.context_length = _context_length(self.model)
        # prompts keep their last `prompt_limit` tokens: the length the run was trained with (None: no limit)
        self.prompt_limit: int | None = run.prompt_limit
        # newer transformers name the KV cache argument ``cache``; older ones ``past_key_values``
        self._cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._tokenizing = threading.Lock()  # request threads take turns with the tokenizer
        self.device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))  # masked out anyway
        bos = self.tokenizer.bos_token_id
        self._adds_bos = bos is not None and self.tokenizer("a")["input_ids"][:1] == [bos]

    # --- prompts -------------------------------------------------------------------------------

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The run's template applied to the conversation, up to where the next assistant answer starts."""
        try:
            return conversation_prompt(self.renderer, [ift.Message(m["role"], m["content"]) for m in messages])
        except ift.IftError as exc:
            raise RequestError(f"the run's template cannot render these messages: {exc}", param="messages") from None

    def encode(self, prompt: str) -> list[int]:
        """Token ids exactly as in training: no special tokens added, except a BOS the tokenizer expects; a prompt
        longer than the run's trained length keeps its last tokens (where the answer starts)."""
        with self._tokenizing:
            ids: list[int] = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if self._adds_bos and not prompt.lstrip().startswith(self.tokenizer.bos_token or "\0"):
            ids.insert(0, self.tokenizer.bos_token_id)
        if self.prompt_limit and len(ids) > self.prompt_limit:
            ids = ids[-self.prompt_limit :]
        return ids

    # --- generation ----------------------------------------------------------------------------

    def new_job(self, ids: list[int], sampling: Sampling, *, template_stops: bool, logprobs: int | None = None) -> Job:
        """A job for :class:`~.engine.BatchEngine`: decode after ``ids`` until EOS, a one-token stop string,
        a stop text (never included in the output), or ``sampling.max_tokens`` tokens (``finish_reason =
        "length"``). A prompt that leaves no room in the model's context is refused here, before it is queued.
        """
        import torch

        if not ids:
            raise RequestError("the prompt is empty after tokenizing")
        budget = min(sampling.max_tokens, self.context_length - len(ids))
        if budget < 1:
            raise RequestError(
                f"the prompt is {len(ids)} tokens; this model's context is {self.context_length} tokens",
                param="messages",
            )
        stops = list(sampling.stop) + (self.template_stops if template_stops else [])
        stop_ids = {self.tokenizer.eos_token_id}
        for text in stops:
            with self._tokenizing:
                one = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(one) == 1 and text in self.tokenizer.all_special_tokens:
                stop_ids.add(one[0])
        stops = [s for s in stops if s not in self.tokenizer.all_special_tokens]
        generator = torch.Generator(device=self.device)
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()
        decoder = RowDecoder(
            self.tokenizer,
            sampling,
            stop_ids=stop_ids,
            stops=stops,
            budget=budget,
            logprobs=logprobs,
            generator=generator,
        )
        return Job(ids, decoder)

    def engine(self, *, max_batch: int = 8, max_queue: int = 64) -> BatchEngine:
        """A started :class:`~.engine.BatchEngine` over this model (stop it with ``engine.stop()``)."""
        return BatchEngine(
            self.model, pad_id=self.pad_id, cache_arg=self._cache_arg, max_batch=max_batch, max_queue=max_queue
        )
