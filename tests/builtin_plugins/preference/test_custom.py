"""The IPO objective of docs/preference.md ("A preference objective of your own"), taken from the page as it is
written, passes the preference objective contract."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from ift.testing.contracts import PreferenceObjectiveContract

DOC = (Path(__file__).resolve().parents[3] / "docs" / "preference.md").read_text(encoding="utf-8")
CODE = re.search(r"IPO \(Azar.*?```python\n(.*?)```", DOC, re.S).group(1)  # type: ignore[union-attr]
PLUGIN = ModuleType("ipo_example")
exec(compile(CODE, "docs/preference.md", "exec"), PLUGIN.__dict__)  # noqa: S102 - the documented example, as shown
NAMESPACE: dict[str, Any] = PLUGIN.__dict__


@pytest.fixture
def ift_plugins() -> list[object]:
    return [PLUGIN]


class TestIPOObjective(PreferenceObjectiveContract):
    component = NAMESPACE["IPOObjective"]
    config = {"max_steps": 4, "batch_size": 4, "learning_rate": 3e-3, "log_every": 1, "max_length": 128, "beta": 0.5}


def test_the_example_registers_its_objective() -> None:
    assert [cls.name for cls in NAMESPACE["ift_register_objectives"]()] == ["ipo"]
