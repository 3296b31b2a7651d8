"""What every contract suite shares: the component under test, its config validated like a recipe table,
files written before it is built, and the checks every component kind must pass."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ift.components import KINDS, Component
from ift.config import ComponentConfig
from ift.records import ROLES, InstructionRecord, Message
from ift.testing.samples import FileContent, write_files

_HOOKS = {
    "source": "ift_register_sources",
    "transform": "ift_register_transforms",
    "renderer": "ift_register_renderers",
    "model_adapter": "ift_register_model_adapters",
    "trainer": "ift_register_trainers",
    "objective": "ift_register_objectives",
    "metric": "ift_register_metrics",
    "similarity_backend": "ift_register_similarity_backends",
    "peft_method": "ift_register_peft_methods",
}


class ComponentContract:
    """Base of the contract suites. A subclass named ``Test...`` sets ``component`` (the class under test)
    and ``config`` (its recipe keys, validated by ``component.Config`` exactly as a recipe table would be);
    ``files`` are written into the folder the component sees as ``base_dir`` before it is built."""

    kind: ClassVar[str] = ""
    component: ClassVar[type[Component]]
    config: ClassVar[dict[str, Any]] = {}
    files: ClassVar[dict[str, FileContent]] = {}

    @classmethod
    def component_class(cls) -> type[Any]:
        component = getattr(cls, "component", None)
        base = KINDS.get(cls.kind)
        if component is None:
            expected = base.__name__ if base else "Component"
            pytest.fail(f"{cls.__name__}: set `component = YourClass` (a subclass of ift.{expected})")
        if base is not None and not (isinstance(component, type) and issubclass(component, base)):
            pytest.fail(f"{cls.__name__}: component {component!r} is not a subclass of ift.{base.__name__}")
        return component

    def make_config(self, base_dir: Path) -> ComponentConfig:
        """The component's config from :attr:`config`; a validation error fails the test with every problem."""
        from pydantic import ValidationError

        cls = self.component_class()
        try:
            return cls.Config.model_validate(dict(self.config))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}" for e in exc.errors())
            pytest.fail(f"{type(self).__name__}.config is not valid for {cls.__name__}.Config: {problems}")

    @pytest.fixture
    def base_dir(self, tmp_path: Path) -> Path:
        """A fresh folder holding :attr:`files`: the component's ``base_dir`` (the recipe's folder)."""
        write_files(tmp_path, self.files)
        return tmp_path

    # --- checks every component kind passes ------------------------------------------------------

    def test_declares_name_and_config(self) -> None:
        cls = self.component_class()
        assert isinstance(getattr(cls, "name", None), str) and cls.name.strip(), (
            f"{cls.__name__} needs a non-empty `name`: the name recipes use"
        )
        assert cls.name == cls.name.strip() and not any(ch.isspace() for ch in cls.name), (
            f"{cls.__name__}.name {cls.name!r} must not contain whitespace"
        )
        assert isinstance(cls.Config, type) and issubclass(cls.Config, ComponentConfig), (
            f"{cls.__name__}.Config must subclass ift.ComponentConfig"
        )

    def test_config_rejects_unknown_keys(self) -> None:
        from pydantic import ValidationError

        cls = self.component_class()
        with pytest.raises(ValidationError, match="no_such_option_xyz"):
            cls.Config.model_validate({**self.config, "no_such_option_xyz": 1})

    def test_registered_on_the_host(self, ift_host: Any) -> None:
        cls = self.component_class()
        registered = ift_host.registry[self.kind].get(cls.name)
        assert registered is not None, (
            f"{cls.__name__} ({self.kind} {cls.name!r}) is not registered on the plugin host: return it from "
            f"{_HOOKS[self.kind]}() in your plugin module and list that module in the `ift_plugins` fixture "
            "(see ift.testing)"
        )
        assert registered.cls is cls, f"{self.kind} name {cls.name!r} is registered by {registered.cls!r}, not {cls!r}"


def record_problems(record: Any, *, source: str | None = None, require_answer: bool = True) -> list[str]:
    """Why ``record`` is not a valid canonical :class:`~ift.InstructionRecord` (empty when it is)."""
    if not isinstance(record, InstructionRecord):
        return [f"{record!r} is a {type(record).__name__}, not an ift.InstructionRecord"]
    where = f"record {record.id!r}"
    problems = []
    if not isinstance(record.id, str) or not record.id:
        problems.append(f"{where}: id must be a non-empty string")
    if source is not None and record.source != source:
        problems.append(f"{where}: source is {record.source!r}, expected the source name {source!r}")
    if not isinstance(record.messages, list) or not record.messages:
        problems.append(f"{where}: messages must be a non-empty list")
    else:
        for i, message in enumerate(record.messages):
            if not isinstance(message, Message):
                problems.append(f"{where}: messages[{i}] is a {type(message).__name__}, not an ift.Message")
            elif message.role not in ROLES or not isinstance(message.content, str):
                problems.append(f"{where}: messages[{i}] needs a role in {ROLES} and string content")
        if require_answer and not any(isinstance(m, Message) and m.role == "assistant" for m in record.messages):
            problems.append(f"{where}: no assistant turn (nothing to train on)")
    for key in ("task", "label"):
        if getattr(record, key) is not None and not isinstance(getattr(record, key), str):
            problems.append(f"{where}: {key} must be a string or None")
    if record.choices is not None and not (
        isinstance(record.choices, list) and all(isinstance(c, str) for c in record.choices)
    ):
        problems.append(f"{where}: choices must be a list of strings or None")
    if not isinstance(record.metadata, dict):
        problems.append(f"{where}: metadata must be a dict")
    else:
        try:
            json.dumps(record.to_dict(), allow_nan=False)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: not JSON-serializable (runs write records to data/*.jsonl): {exc}")
    return problems


def is_number(value: Any) -> bool:
    if hasattr(value, "detach"):
        value = value.detach()
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def finite(value: Any) -> bool:
    if hasattr(value, "detach"):
        value = value.detach()
    return is_number(value) and math.isfinite(float(value))
