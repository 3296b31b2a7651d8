"""Preference tuning: the ``dpo``, ``orpo`` and ``kto`` objectives (docs/preference.md)."""

from __future__ import annotations

import ift
from ift.builtin_plugins.preference.objectives import DPOObjective, KTOObjective, ORPOObjective


@ift.hookimpl
def ift_register_objectives() -> list[type]:
    return [DPOObjective, ORPOObjective, KTOObjective]
