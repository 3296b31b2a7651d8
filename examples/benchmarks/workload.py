"""What both trainers get: seeded synthetic prompt/completion data, one tiny randomly initialised Llama saved
to a folder once, the byte-level tokenizer saved beside it, and the training settings of each comparison.

Nothing here imports ift or TRL at module level, so the orchestrator (``run.py``) can use it before the
benchmark environment exists.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health "
    "person art war history party result change morning reason research girl guy moment air teacher force "
    "education"
).split()
VERBS = (
    "Summarize",
    "Explain",
    "Rewrite",
    "List",
    "Describe",
    "Translate",
    "Classify",
    "Continue",
    "Answer",
    "Compare",
)

# The model: a 4-layer Llama small enough for two CPU cores, large enough that the step time is dominated by
# the model (not by Python) at a few hundred tokens per example.
MODEL_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
}
MODEL_SEED = 1234
DATA_SEED = 0

# Character lengths (= tokens: the tokenizer is byte-level, the text is ASCII). Lognormal, like real
# instruction data (a long tail of long answers); clipped so that every example fits max_length (1024): TRL's
# padding-free mode does not truncate, so the two sides train on the same tokens without truncation.
LOGNORMAL = {"prompt": (math.log(40), 0.7, 12, 200), "completion": (math.log(100), 0.9, 4, 500)}
CONSTANT = {"prompt": 48, "completion": 143}


def _text(rng: random.Random, length: int) -> str:
    words: list[str] = []
    size = -1
    while size < length:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


def _lognormal(rng: random.Random, spec: tuple[float, float, int, int]) -> int:
    mu, sigma, low, high = spec
    return int(min(high, max(low, round(rng.lognormvariate(mu, sigma)))))


def make_rows(kind: str, n: int, seed: int = DATA_SEED) -> list[dict[str, str]]:
    """``n`` prompt/completion rows. ``kind``: ``lognormal`` or ``constant`` lengths. The prompt ends with a
    newline so that prompt + completion + EOS is the whole training text on both sides."""
    rng = random.Random(f"{kind}:{seed}")
    rows = []
    for i in range(n):
        if kind == "lognormal":
            p_len, c_len = _lognormal(rng, LOGNORMAL["prompt"]), _lognormal(rng, LOGNORMAL["completion"])
        elif kind == "constant":
            p_len, c_len = CONSTANT["prompt"], CONSTANT["completion"]
        else:
            raise ValueError(f"unknown data kind {kind!r}")
        head = f"{rng.choice(VERBS)} #{i}: "
        prompt = head + _text(rng, max(1, p_len - len(head) - 1)) + "\n"
        rows.append({"prompt": prompt, "completion": _text(rng, c_len)})
    return rows


def write_jsonl(rows: list[dict[str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def build_model_dir(path: Path, config: dict[str, Any] | None = None) -> Path:
    """Save the seeded random model and the byte-level tokenizer once; both trainers load this folder.
    ``config`` replaces :data:`MODEL_CONFIG` (e.g. a real 0.5B-1B architecture for a GPU run)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ift.builtin_plugins.byte_tokenizer import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    options = dict(config or MODEL_CONFIG)
    model_type = options.pop("model_type")
    options.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(MODEL_SEED)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **options), dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@dataclass
class Settings:
    """One training configuration, identical for both trainers (the same optimizer, schedule, clipping,
    batch size, max length and number of optimizer steps)."""

    data: str  # lognormal | constant
    ift_batching: str  # auto | padding | length-grouped | padding-free | packing
    trl_mode: str  # default | padding_free | packing | group_by_length
    steps: int = 40
    batch_size: int = 8  # examples per batch; packed rows per batch for packing
    max_length: int = 1024
    learning_rate: float = 1e-3
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    shuffle: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
