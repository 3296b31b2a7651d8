"""Tiny models and examples for the trainer tests (no downloads: models built from a config, the byte-level
tokenizer), and a hand-written loss to check trainers against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
WORDS = ["abc", "dog", "cat", "xyz", "sun", "map", "red", "toy", "fig", "jam", "owl", "pen"]


class Recorder:
    """Stands in for the run's progress display; keeps what trainers write."""

    total = 0

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, *args: Any) -> None:
        pass

    def stage(self, name: str) -> None:
        self.lines.append(f"[{name}]")

    def write(self, message: str) -> None:
        self.lines.append(message)


def build(tmp_path: Path, seed: int = 0, **options: Any) -> tuple[CausalLMAdapter, Any, Any]:
    options = {"tokenizer": "byte-level", "from_config": TINY, "device": "cpu", **options}
    adapter = CausalLMAdapter(CausalLMAdapter.Config(**options), base_dir=tmp_path)
    tokenizer = adapter.load_tokenizer()
    torch.manual_seed(seed)
    return adapter, tokenizer, adapter.load_model(tokenizer)


def encode(adapter: CausalLMAdapter, tokenizer: Any, word: str, source: str = "s") -> ift.EncodedExample:
    return adapter.encode(
        tokenizer,
        [ift.Segment(f"Uppercase {word}:\n", False), ift.Segment(f"{word.upper()}<|endoftext|>", True)],
        source=source,
        record_id=f"{source}-{word}",
    )


def manual_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Summed next-token negative log-likelihood of the labelled positions, written out by hand."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logp = torch.log_softmax(logits.double(), dim=-1)[keep]
    return -logp.gather(1, labels[keep].unsqueeze(1)).sum()
