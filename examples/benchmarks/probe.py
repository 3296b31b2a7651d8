"""The same measurement code inside both trainers' processes, so that no number depends on what a trainer
says about itself.

- Tokens are counted from the ``input_ids`` tensor that reaches the model's backbone (``LlamaModel`` for the
  default model) in training, the one call every trainer has to make: real tokens are those that are not
  the pad token, slots are all positions.
- A step ends when the optimizer's ``step()`` returns (a global optimizer hook, which fires for any
  ``torch.optim`` optimizer, wrapped by accelerate or not).
- Peak RSS is ``getrusage`` of this process; the current RSS is sampled at every step end from
  ``/proc/self/statm`` to see whether memory stays flat over the second half of the run. On a GPU,
  ``max_memory_allocated`` is recorded too.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time
from typing import Any


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class Probe:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.first_forward: float | None = None
        self.steps: list[dict[str, Any]] = []
        self._real = self._slots = self._rows = 0

    def install(self, model_dir: str) -> None:
        """Wrap the ``forward`` of the backbone class of the model saved in ``model_dir``."""
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from transformers import MODEL_MAPPING, AutoConfig

        backbone: Any = MODEL_MAPPING[type(AutoConfig.from_pretrained(model_dir))]
        original = backbone.forward
        probe = self

        @functools.wraps(original)
        def forward(module: Any, *args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and module.training and torch.is_grad_enabled():
                if probe.first_forward is None:
                    probe.first_forward = time.perf_counter()
                probe._real += int((ids != probe.pad_id).sum())
                probe._slots += ids.numel()
                probe._rows += ids.shape[0]
            return original(module, *args, **kwargs)

        backbone.forward = forward
        register_optimizer_step_post_hook(self._stepped)

    def _stepped(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.steps.append(
            {
                "end": time.perf_counter(),
                "real": self._real,
                "slots": self._slots,
                "rows": self._rows,
                "rss_mb": current_rss_mb(),
            }
        )
        self._real = self._slots = self._rows = 0

    def summary(self, t0: float, warmup: int) -> dict[str, Any]:
        """Throughput over the steps after ``warmup`` (the first steps carry one-time allocation costs):
        tokens of those steps / time from the end of step ``warmup`` to the end of the last step."""
        steps = self.steps
        timed = steps[warmup:]
        seconds = (
            timed[-1]["end"] - steps[warmup - 1]["end"]
            if warmup and len(steps) > warmup
            else (steps[-1]["end"] - (self.first_forward or t0) if steps else 0.0)
        )
        real = sum(s["real"] for s in timed)
        slots = sum(s["slots"] for s in timed)
        all_real = sum(s["real"] for s in steps)
        all_slots = sum(s["slots"] for s in steps)
        rss = [s["rss_mb"] for s in steps if s["rss_mb"] is not None]
        gpu_peak = None
        try:
            import torch

            if torch.cuda.is_available():
                gpu_peak = torch.cuda.max_memory_allocated() / 2**20
        except ImportError:
            pass
        return {
            "steps": len(steps),
            "tokens_per_s": real / seconds if seconds > 0 else None,
            "timed_seconds": seconds,
            "timed_real_tokens": real,
            "timed_slots": slots,
            "real_tokens": all_real,
            "slots": all_slots,
            "padding_fraction": 1 - all_real / all_slots if all_slots else None,
            "preprocess_s": (self.first_forward - t0) if self.first_forward else None,
            "peak_rss_mb": peak_rss_mb(),
            "gpu_peak_mb": gpu_peak,
            "rss_mid_mb": rss[len(rss) // 2] if rss else None,
            "rss_end_mb": rss[-1] if rss else None,
            "per_step_real": [s["real"] for s in steps],
            "per_step_slots": [s["slots"] for s in steps],
        }
