"""A tiny causal LM on the byte tokenizer, preference examples encoded through the real path (records ->
renderer -> adapter), and a training context for calling the objectives directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter
from ift.builtin_plugins.renderers import ChatMLRenderer
from ift.data import DataReport, encode_records
from ift.records import normalize_row

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


def adapter(tmp: Path, peft: dict[str, Any] | None = None) -> tuple[CausalLMAdapter, Any]:
    config = CausalLMAdapter.Config(tokenizer="byte-level", from_config=TINY, **({"peft": peft} if peft else {}))
    made = CausalLMAdapter(config, base_dir=tmp)
    return made, made.load_tokenizer()


def model(made: CausalLMAdapter, tokenizer: Any) -> Any:
    torch.manual_seed(0)
    return made.load_model(tokenizer)


def records(rows: list[dict[str, Any]], source: str = "prefs") -> list[ift.InstructionRecord]:
    out = []
    for i, row in enumerate(rows):
        messages, extras = normalize_row(row)
        out.append(ift.InstructionRecord(str(i), source, messages, **extras))
    return out


def encode(
    made: CausalLMAdapter, tokenizer: Any, recs: list[ift.InstructionRecord], max_length: int = 256
) -> list[ift.EncodedExample]:
    renderer = ChatMLRenderer(ChatMLRenderer.Config(), base_dir=Path("."))
    renderer.bind(tokenizer)
    cfg = ift.TrainerConfig(max_length=max_length)
    examples, _ = encode_records(recs, renderer, made, tokenizer, cfg, "train", DataReport())
    return examples


def pair_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    """Pairs whose chosen answer repeats the prompt's word in capitals and whose rejected one is lower case."""
    words = [
        "apple",
        "river",
        "stone",
        "cloud",
        "green",
        "tiger",
        "piano",
        "lemon",
        "candle",
        "mirror",
        "forest",
        "rocket",
        "button",
        "garden",
        "silver",
        "window",
    ]
    rows = []
    for i in range(offset, offset + n):
        word = words[i % len(words)] + ("" if i < len(words) else str(i))
        rows.append({"prompt": f"Shout {word}", "chosen": word.upper() + "!", "rejected": word + "."})
    return rows


def context(
    made: CausalLMAdapter, tokenizer: Any, net: Any, train: Any, eval_: Any, *, tmp: Path = Path(".")
) -> ift.TrainContext:
    ctx = ift.TrainContext(
        model=net,
        tokenizer=tokenizer,
        adapter=made,
        train_examples=train,
        eval_examples=eval_,
        seed=3,
        run_dir=tmp,
        log_step=lambda e: None,
        evaluate=lambda m, s: {},
        progress=None,
    )  # type: ignore[arg-type]
    return ctx


def objective(cls: Any, batch_size: int = 4, **keys: Any) -> Any:
    """An objective as its trainer makes it: its own keys, and the loop's configuration beside them."""
    made = cls(cls.Config(**keys))
    made.training = ift.TrainingConfig(batch_size=batch_size)
    return made
