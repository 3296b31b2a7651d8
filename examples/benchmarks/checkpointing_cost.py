"""What ``gradient_checkpointing = true`` saves and costs: one forward + backward through the causal-lm
adapter's loss, with and without, each in a fresh process, A B A B: ``python checkpointing_cost.py [LAYERS]``.

The model is SmolLM2-135M's shape (hidden 576, 9 heads, vocabulary 49,152) with LAYERS decoder layers
(default 6 of its 30, to keep the run short), randomly initialised, fp32; batch 8 x 512 tokens, half trained.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

SHAPE = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def side(checkpointing: bool, layers: int) -> dict[str, float]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ift.builtin_plugins import hf_loading
    from ift.builtin_plugins.causal_lm import CausalLMAdapter

    torch.manual_seed(0)
    config = LlamaConfig(**{k: v for k, v in SHAPE.items() if k != "model_type"}, num_hidden_layers=layers)
    model = AutoModelForCausalLM.from_config(config).train()
    if checkpointing:
        hf_loading.enable_gradient_checkpointing(model)
    ids = torch.randint(0, 49152, (8, 512))
    labels = ids.clone()
    labels[:, :256] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    adapter = CausalLMAdapter.__new__(CausalLMAdapter)  # loss_sum needs no config
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    began = time.perf_counter()
    loss, _ = adapter.loss_sum(model, batch)
    loss.backward()
    return {
        "seconds": time.perf_counter() - began,
        "added_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - base,
        "loss": float(loss),
    }


def main() -> int:
    if len(sys.argv) == 3:
        print(json.dumps(side(sys.argv[1] == "on", int(sys.argv[2]))))
        return 0
    layers = sys.argv[1] if len(sys.argv) > 1 else "6"
    for _ in range(2):
        for mode in ("off", "on"):
            out = subprocess.run([sys.executable, __file__, mode, layers], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.splitlines()[-1])
            print(
                f"checkpointing {mode}: +{r['added_gib']:.2f} GiB over weights and inputs, {r['seconds']:.1f} s, "
                f"loss {r['loss']:.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
