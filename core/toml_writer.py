"""Just enough TOML writing for recipes given as dicts: tables, arrays of tables (``[[data]]``), inline
tables and arrays below them. ``ift.load_recipe`` keeps a dict recipe as this text (the run directory's
``recipe.toml``) and ``ift.testing`` writes recipes with it; ift otherwise only reads TOML, so this avoids a
dependency."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, Mapping):
        items = [f"{_key(str(k))} = {_value(v, f'{where}.{k}')}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"{where}: cannot write a {type(value).__name__} as TOML")


def dumps(recipe: Mapping[str, Any]) -> str:
    """TOML text for ``recipe``. Top-level dicts become tables, top-level lists of dicts arrays of tables,
    anything nested inline values. ``None`` values are left out (TOML has no null: the key's default applies)."""
    head: list[str] = []
    body: list[str] = []
    for key, value in recipe.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            body.append(f"\n[{_key(key)}]")
            body.extend(f"{_key(str(k))} = {_value(v, f'{key}.{k}')}" for k, v in value.items() if v is not None)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            for i, table in enumerate(value):
                body.append(f"\n[[{_key(key)}]]")
                body.extend(
                    f"{_key(str(k))} = {_value(v, f'{key}[{i}].{k}')}" for k, v in table.items() if v is not None
                )
        else:
            head.append(f"{_key(key)} = {_value(value, key)}")
    return "\n".join(head + body).lstrip("\n") + "\n"


def value_text(value: Any, where: str = "value") -> str:
    """One value as TOML (``2``, ``"sft"``, ``[1, 2]``, ``{ r = 4 }``): what ``--set KEY=VALUE`` takes."""
    return _value(value, where)
