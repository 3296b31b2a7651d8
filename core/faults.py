"""Fault injection for reliability tests: ``IFT_FAULT=<point>`` kills the process with SIGKILL when the
run reaches that point (e.g. ``step-5``, ``micro-7-1``, ``checkpoint-write-10``). Unset in normal use."""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    """Call at a named point; dies there when the environment asks for it."""
    if os.environ.get("IFT_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
