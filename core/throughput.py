"""Honest throughput accounting: real tokens, supervised tokens, padding, data wait, peak memory, MFU.

MFU (model FLOPs utilisation) on a GPU uses the PaLM accounting (Chowdhery et al. 2022, appendix B):
6·N FLOPs per token for a full fine-tune (forward 2·N, backward 4·N), 4·N for adapters such as LoRA
(the frozen weights need no weight gradients), plus the attention term 12·L·H·T per token (L layers, H hidden
size, T the mean attended length), divided by the GPU's dense bf16 peak.
"""

from __future__ import annotations

import resource
import sys
from typing import Any

# Dense BF16 tensor-core peaks from the vendors' data sheets, in FLOP/s.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "L4": 121e12,
    "B200": 2250e12,
}


def peak_memory_bytes(device: Any) -> tuple[int, str]:
    """Peak memory so far: ``max_memory_allocated`` on CUDA, the process's peak RSS otherwise."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "peak_rss"


def gpu_peak_flops(device: Any) -> float | None:
    if getattr(device, "type", "cpu") != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def flops_per_token(model: Any, trainable_only: bool, mean_context: float) -> float:
    """6·N (full) or 4·N (adapters) + 12·L·H·T, from the model's config."""
    total = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    per_param = 4 if trainable_only else 6
    return per_param * total + 12 * layers * hidden * mean_context
