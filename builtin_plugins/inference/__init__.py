"""Using a finished run: ``ift generate``, ``ift chat`` and ``ift export``.

Every command opens the run through :func:`~ift.builtin_plugins.inference.runs.open_run`: the model comes from
the run's own model adapter (``adapter.load_trained``), the template is rebuilt from ``resolved.json`` and
must hash to the value recorded in ``manifest.json``, so prompts are rendered exactly as in training. The
commands call ``adapter.generate``, so they work for every model adapter, not only causal LMs.

Importing this package imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any

import ift
from ift.builtin_plugins.inference import commands


@ift.hookimpl
def ift_register_commands(cli: Any) -> None:
    for command in (commands.generate, commands.chat, commands.export):
        cli.add_command(command)
