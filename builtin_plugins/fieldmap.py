"""Field mapping for sources: data in the shape people have it, without flattening it in Python first.

``fields`` says where each canonical field is in a row, as a dotted path into nested objects
(``meta.question``); ``explode`` names a list field whose elements each become one record, with ids
``<row id>#<k>`` (``k`` the 0-based position in the list, so ids stay stable while the list does). Inside the
mapping, the exploded field's path stands for the current element: with ``explode = "instances"``,
``input = "instances.input"`` is the element's ``input``. See docs/data.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ift.records import RowError

_MISSING = object()


class FieldMap(BaseModel):
    """Where each canonical field is in a row: a key, or a dotted path into nested objects."""

    model_config = ConfigDict(extra="forbid")
    instruction: str | None = Field(None, description="The instruction (alpaca).")
    input: str | None = Field(None, description="Optional context appended to the instruction (alpaca).")
    output: str | None = Field(None, description="The answer (alpaca).")
    prompt: str | None = Field(None, description="The prompt (prompt-completion).")
    completion: str | None = Field(
        None, description="The answer (prompt-completion; an unpaired preference row's completion)."
    )
    chosen: str | None = Field(None, description="The preferred answer of a preference pair.")
    rejected: str | None = Field(None, description="The rejected answer of a preference pair.")
    text: str | None = Field(None, description="The text to classify (classification).")
    label: str | None = Field(
        None, description="The class label (classification; true / false for an unpaired preference row)."
    )
    choices: str | None = Field(None, description="A list of answer choices.")
    messages: str | None = Field(None, description="A list of {role, content} turns.")
    conversations: str | None = Field(None, description="A list of ShareGPT {from, value} turns.")
    system: str | None = Field(None, description="A per-row system prompt.")
    task: str | None = Field(None, description="A task label (per-task metrics and mixtures).")
    id: str | None = Field(None, description="The row's stable id.")
    metadata: str | None = Field(None, description="An object kept as the record's metadata.")


def lookup(row: Any, path: str) -> Any:
    """The value at dotted ``path`` in ``row``, or ``_MISSING``; a numeric part indexes a list."""
    node = row
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _with_element(row: Mapping[str, Any], path: str, element: Any) -> dict[str, Any]:
    """A copy of ``row`` with the list at ``path`` replaced by one of its elements."""
    head, _, rest = path.partition(".")
    out = dict(row)
    out[head] = _with_element(row[head], rest, element) if rest else element
    return out


def remap(row: Mapping[str, Any], fields: FieldMap | None) -> dict[str, Any]:
    """A row with the canonical keys the normalizers read, taken from the mapped paths. Keys that are not
    mapped keep their own column (so ``fields = { output = "answer" }`` still reads ``instruction``)."""
    if fields is None:
        return dict(row)
    out = dict(row)
    for name, path in fields.model_dump(exclude_none=True).items():
        value = lookup(row, path)
        if value is _MISSING:
            out.pop(name, None)
            if name not in ("input", "system", "task", "choices", "metadata", "id", "label"):
                raise RowError(f"no field at {path!r} (fields.{name}); the row has keys {sorted(row)}")
        else:
            out[name] = value
    return out


def explode(row: Mapping[str, Any], path: str | None) -> Iterator[tuple[int | None, Mapping[str, Any]]]:
    """``(k, row with element k in place of the list)`` for each element of the list at ``path``; the row
    itself (``k`` None) without ``explode``."""
    if path is None:
        yield None, row
        return
    value = lookup(row, path)
    if value is _MISSING:
        raise RowError(f"no field at {path!r} (explode); the row has keys {sorted(row)}")
    if not isinstance(value, list):
        raise RowError(f"explode = {path!r} must name a list, got {type(value).__name__}")
    for k, element in enumerate(value):
        yield k, _with_element(row, path, element)
