"""Training progress: a tqdm bar on a terminal, plain log lines otherwise (CI, log files)."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class Progress:
    """Shows steps, loss, learning rate and tokens/s. ``interactive=None`` decides from the stream."""

    def __init__(self, total: int, *, stream: TextIO | None = None, interactive: bool | None = None,
                 enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.enabled = enabled
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._bar: Any = None
        if enabled and self.interactive:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="train", unit="step", file=self.stream, dynamic_ncols=True)

    def step(self, step: int, event: dict[str, Any] | None = None) -> None:
        """Advance to ``step``; ``event`` is a logged step (loss, learning_rate, tokens_per_s)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if event:
                self._bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['learning_rate']:.2e}",
                                      tok_s=f"{event['tokens_per_s']:.0f}")
        elif event:
            self.write(f"step {step}/{self.total}  loss {event['loss']:.4f}  lr {event['learning_rate']:.2e}"
                       f"  tokens/s {event['tokens_per_s']:.0f}")

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
