"""The canonical instruction record every source produces, and the normalizers that build it.

Alpaca rows, OpenAI-style ``messages``, ShareGPT ``conversations``, prompt/completion rows and classification
rows (a text and its ``label``) all become one :class:`InstructionRecord`, so every renderer, adapter and metric
works with every source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = ["InstructionRecord", "Message", "RowError", "normalize_row"]

ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("auto", "alpaca", "messages", "sharegpt", "prompt-completion", "classification")
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "bot": "assistant", "model": "assistant", "tool": "tool",
                   "function": "tool", "observation": "tool", "function_response": "tool"}
_MESSAGE_ROLES = {"function": "tool"}  # OpenAI's older name for a tool result


@dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    ``train`` (from a ``"train": false`` key in ``messages`` data) set to False keeps an assistant turn in the
    context but out of the loss. ``tool_calls`` (an assistant's calls, OpenAI-style), ``name`` and ``tool_call_id``
    (a tool result's) are passed to chat templates that render them; tool results are never trained.
    """

    role: str
    content: str
    train: bool | None = None
    tool_calls: tuple[dict[str, Any], ...] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The message as a chat template sees it (only the keys that are set; ``train`` is ift's own)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls is not None:
            out["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    def to_record_dict(self) -> dict[str, Any]:
        """Everything, ``train`` included (records written to a run's data folder)."""
        out = self.to_dict()
        if self.train is not None:
            out["train"] = self.train
        return out

    @property
    def trained(self) -> bool:
        """Whether an assistant turn is in the loss unless the template's ``train_on`` says otherwise."""
        return self.role == "assistant" and self.train is not False


@dataclass
class InstructionRecord:
    """One training or evaluation example, whatever its origin.

    ``id`` is stable across runs (it comes from the source: file and row, or the dataset's own id);
    ``source`` is the name of the ``[[data]]`` table it came from.
    """

    id: str
    source: str
    messages: list[Message]
    task: str | None = None
    label: str | None = None
    choices: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The final assistant turn: the reference for generation metrics."""
        for message in reversed(self.messages):
            if message.role == "assistant":
                return message.content
        return ""

    def content_key(self) -> str:
        """A hash of what the model sees (roles and text), used to keep eval examples out of training."""
        text = json.dumps([[m.role, " ".join(m.content.split())] for m in self.messages])
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "task": self.task, "label": self.label,
                "choices": self.choices, "metadata": self.metadata,
                "messages": [m.to_record_dict() for m in self.messages]}


class RowError(ValueError):
    """A row does not fit the declared format; sources turn this into a DataError with file and line."""


def detect_format(row: Mapping[str, Any]) -> str:
    """Guess a row's format from its keys."""
    def has(key: str) -> bool:  # datasets fills a column missing from a row with None
        return row.get(key) is not None

    if has("messages"):
        return "messages"
    if has("conversations"):
        return "sharegpt"
    if has("label") and not (has("output") or has("prompt") or has("completion")):
        return "classification"  # a text (or instruction) with its label and no answer of its own
    if has("instruction"):
        return "alpaca"  # a missing output is then reported as such
    if has("prompt"):
        return "prompt-completion"
    raise RowError(
        "cannot tell the row's format from its keys "
        f"{sorted(k for k, v in row.items() if v is not None)}; expected 'instruction'+'output' (alpaca), "
        "'messages', 'conversations' (sharegpt), 'prompt'+'completion' or 'text'+'label' (classification); "
        "set format = ... on the [[data]] table"
    )


def _text(row: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _messages(turns: Any, role_key: str, content_key: str, role_map: Mapping[str, str] | None) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise RowError("conversation must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or role_key not in turn:
            raise RowError(f"turn {i} must have {role_key!r} and {content_key!r}")
        raw_role = str(turn[role_key])
        role = role_map.get(raw_role.lower(), "") if role_map else _MESSAGE_ROLES.get(raw_role, raw_role)
        if role not in ROLES:
            raise RowError(f"turn {i} has unknown role {turn[role_key]!r}")
        tool_calls = turn.get("tool_calls")
        content = turn.get(content_key)
        if content is None and tool_calls is not None:
            content = ""  # an assistant turn that only calls tools
        if content_key not in turn and tool_calls is None:
            raise RowError(f"turn {i} must have {role_key!r} and {content_key!r}")
        if not isinstance(content, str):
            raise RowError(f"turn {i} content must be a string")
        train = turn.get("train")
        if train is not None and not isinstance(train, bool):
            raise RowError(f"turn {i}: 'train' must be true or false, got {train!r}")
        if tool_calls is not None:
            if role != "assistant" or not isinstance(tool_calls, list) or \
                    not all(isinstance(c, Mapping) for c in tool_calls):
                raise RowError(f"turn {i}: 'tool_calls' must be a list of objects on an assistant turn")
            tool_calls = tuple(dict(c) for c in tool_calls)
        name, call_id = turn.get("name"), turn.get("tool_call_id")
        out.append(Message(role, content, train=train, tool_calls=tool_calls,
                           name=str(name) if name is not None else None,
                           tool_call_id=str(call_id) if call_id is not None else None))
    return out


def _label(row: Mapping[str, Any]) -> str:
    value = row.get("label")
    if value is None:
        raise RowError("missing field 'label'")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError(f"field 'label' must be a string or an integer, got {type(value).__name__}")
    label = str(value).strip()
    if not label:
        raise RowError("field 'label' is empty")
    return label


def _classification(row: Mapping[str, Any]) -> list[Message]:
    """``text`` (or ``instruction`` with an optional ``input``) and ``label``; the label is also the answer, so
    generation metrics and causal-LM adapters work on classification data too."""
    if row.get("text") is not None and row.get("instruction") is not None:
        raise RowError("a classification row has either 'text' or 'instruction' (+ 'input'), not both")
    if row.get("text") is not None:
        user = _text(row, "text")
    elif row.get("instruction") is not None:
        instruction = _text(row, "instruction")
        extra_input = _text(row, "input", required=False)
        user = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    else:
        raise RowError("missing field 'text' (or 'instruction') of a classification row")
    if not user.strip():
        raise RowError("the text to classify is empty")
    return [Message("user", user), Message("assistant", _label(row))]


def normalize_row(row: Mapping[str, Any], fmt: str = "auto", *,
                  system: str | None = None) -> tuple[list[Message], dict[str, Any]]:
    """Turn one raw row into messages plus the extra fields (label, choices, task, metadata)."""
    if fmt == "auto":
        fmt = detect_format(row)
    if fmt == "alpaca":
        instruction = _text(row, "instruction")
        extra_input = _text(row, "input", required=False)
        user = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
        messages = [Message("user", user), Message("assistant", _text(row, "output"))]
    elif fmt == "prompt-completion":
        messages = [Message("user", _text(row, "prompt")), Message("assistant", _text(row, "completion"))]
    elif fmt == "classification":
        messages = _classification(row)
    elif fmt == "messages":
        messages = _messages(row.get("messages"), "role", "content", None)
    elif fmt == "sharegpt":
        messages = _messages(row.get("conversations"), "from", "value", _SHAREGPT_ROLES)
    else:
        raise RowError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if system and messages[0].role != "system":
        messages.insert(0, Message("system", system))
    if messages[-1].role != "assistant":
        raise RowError("the last turn must be the assistant's answer")
    if not any(m.trained for m in messages):
        raise RowError("no assistant turn is trained (every one has \"train\": false)")
    extras: dict[str, Any] = {}
    for key in ("label", "task"):
        if row.get(key) is not None:
            extras[key] = str(row[key])
    if fmt == "classification":
        extras["label"] = messages[-1].content  # validated and stripped
    if row.get("choices") is not None:
        if not isinstance(row["choices"], list):
            raise RowError("field 'choices' must be a list")
        extras["choices"] = [str(c) for c in row["choices"]]
    if isinstance(row.get("metadata"), Mapping):
        extras["metadata"] = dict(row["metadata"])
    return messages, extras
