"""A model folder holding only a pickle checkpoint with arbitrary objects is refused in one clear line."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

import ift
from ift.builtin_plugins.causal_lm import CausalLMAdapter

CONFIG = {
    "model_type": "llama",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "vocab_size": 300,
    "max_position_embeddings": 64,
}


def test_a_pickle_only_model_folder_is_a_run_error_not_an_internal_error(tmp_path: Path) -> None:
    import torch

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(CONFIG))
    torch.save({"weights": collections.Counter(a=1), "hook": print}, tmp_path / "m" / "pytorch_model.bin")
    adapter = CausalLMAdapter(
        CausalLMAdapter.Config.model_validate({"name_or_path": "m", "tokenizer": "byte-level", "device": "cpu"}),
        base_dir=tmp_path,
    )
    tokenizer = adapter.load_tokenizer()
    with pytest.raises(ift.RunError) as info:
        adapter.load_model(tokenizer)
    assert "its weights are a pickle checkpoint" in str(info.value) and "model.name_or_path" in str(info.value)
    tokenizer.save_pretrained(str(tmp_path / "m"))  # a run's model folder has its tokenizer
    with pytest.raises(ift.RunError, match="cannot load the model saved in .*: its weights are a pickle checkpoint"):
        adapter.load_trained(tmp_path / "m")
