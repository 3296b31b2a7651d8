"""Tiny models for tests: a Llama-shaped model of a few thousand parameters, built from a config with the
builtin byte-level tokenizer, so nothing is downloaded and a training step takes milliseconds."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The smallest model the causal-lm adapter builds quickly that still learns: 2 layers, hidden size 32.
TINY_MODEL_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def tiny_model_table(**overrides: Any) -> dict[str, Any]:
    """A recipe's ``[model]`` table for the tiny model (a fresh copy: change it freely). ``overrides`` are
    merged on top, e.g. ``tiny_model_table(peft={"method": "lora", "r": 4})``; ``from_config`` values given as
    a dict are merged into the tiny config rather than replacing it."""
    table: dict[str, Any] = {
        "adapter": "causal-lm",
        "tokenizer": "byte-level",
        "device": "cpu",
        "dtype": "float32",
        "from_config": copy.deepcopy(TINY_MODEL_CONFIG),
    }
    extra = dict(overrides)
    if isinstance(extra.get("from_config"), dict):
        table["from_config"].update(extra.pop("from_config"))
    table.update(copy.deepcopy(extra))
    return table


def tiny_model_toml(**overrides: Any) -> str:
    """The ``[model]`` table of :func:`tiny_model_table` as TOML text, header included, for recipes written
    as strings."""
    from ift.testing.toml import dumps

    return dumps({"model": tiny_model_table(**overrides)})


def component_config(table: dict[str, Any]) -> dict[str, Any]:
    """A component table without its selector key (``adapter``/``name``/``source``): what its Config sees."""
    return {k: v for k, v in table.items() if k not in ("adapter", "name", "source")}


@dataclass
class TinyModel:
    """A loaded tiny model: the adapter that built it, its tokenizer and the model (float32, CPU)."""

    adapter: Any
    tokenizer: Any
    model: Any
    table: dict[str, Any]

    def snapshot(self) -> dict[str, Any]:
        """A copy of the trainable weights, to check later that training changed them."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def describe(self) -> str:
        return json.dumps(self.table.get("from_config", {}), sort_keys=True)


def load_tiny_model(
    host: Any, table: dict[str, Any] | None = None, *, base_dir: Path | None = None, seed: int = 0
) -> TinyModel:
    """Build the adapter named by ``table['adapter']`` from ``host`` and load tokenizer and model, seeded so
    two calls give identical weights."""
    from ift.runtime import seed_everything

    table = table if table is not None else tiny_model_table()
    cls = host.get("model_adapter", table.get("adapter", "causal-lm")).cls
    config = cls.Config.model_validate(component_config(table), context={"host": host})  # plugins' PEFT methods
    adapter = cls(config, base_dir=base_dir or Path.cwd())
    tokenizer = adapter.load_tokenizer()
    seed_everything(seed)
    model = adapter.load_model(tokenizer)
    return TinyModel(adapter, tokenizer, model, table)
