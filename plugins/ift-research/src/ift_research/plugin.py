"""The ``research`` plugin: what this distribution registers with ift, one hook per plugin kind.

Found through the ``ift`` entry-point group (``research = "ift_research.plugin"``); each kind's classes live in
their own module.
"""

from __future__ import annotations

import ift
from ift_research.objectives import LabelSmoothing
from ift_research.peft_methods import LoHaMethod, VeraMethod


@ift.hookimpl
def ift_register_peft_methods() -> list[type]:
    return [LoHaMethod, VeraMethod]


@ift.hookimpl
def ift_register_objectives() -> list[type]:
    return [LabelSmoothing]
