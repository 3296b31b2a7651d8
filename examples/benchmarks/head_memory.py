"""Peak RSS of the LM head's loss alone, full logits vs ift's chunked loss at trained positions:
``python examples/benchmarks/head_memory.py`` (runs each side in a fresh process, A B A B).

SmolLM2-135M's head shape (hidden 576, vocabulary 49,152), batch 8 x max length 512 in fp32, half of the
positions trained (a typical completion share): forward and backward of the cross-entropy through the head,
from hidden states that require a gradient. What it isolates is the part of a training step's peak that the
chunked loss removes; the decoder layers' activations, weights, gradients and AdamW state come on top.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

HIDDEN, VOCAB, BATCH, LENGTH = 576, 49_152, 8, 512


def side(name: str) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from ift import head_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    hidden = torch.randn(BATCH, LENGTH, HIDDEN, requires_grad=True)
    labels = torch.randint(0, VOCAB, (BATCH, LENGTH))
    labels[:, : LENGTH // 2] = -100  # the prompt half carries no loss
    shifted = labels[:, 1:]
    mask = shifted != -100
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    began = time.perf_counter()
    if name == "full logits":
        logits = head(hidden)[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), shifted.reshape(-1), ignore_index=-100, reduction="sum")
    else:
        states = head_loss.HeadInputs(hidden[:, :-1][mask], head, None, VOCAB)
        loss = head_loss.cross_entropy(states, shifted[mask]).sum()
    loss.backward()
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "loss": float(loss),
        "grad_norm": float(hidden.grad.norm()),
        "peak_gib": peak,
        "added_gib": peak - base,
        "seconds": seconds,
    }


def main() -> int:
    if len(sys.argv) == 2:
        print(json.dumps(side(sys.argv[1])))
        return 0
    found: dict[str, list[dict[str, float]]] = {"full logits": [], "chunked": []}
    for _ in range(2):
        for name in found:
            out = subprocess.run([sys.executable, __file__, name], check=True, capture_output=True, text=True)
            found[name].append(json.loads(out.stdout.splitlines()[-1]))
    for name, runs in found.items():
        print(
            f"{name}: "
            + "; ".join(
                f"peak {r['peak_gib']:.2f} GiB (+{r['added_gib']:.2f} over the inputs), "
                f"{r['seconds']:.2f} s, loss {r['loss']:.4f}, |grad| {r['grad_norm']:.6f}"
                for r in runs
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
