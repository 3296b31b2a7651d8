"""The canonical instruction record every source produces, and the normalizers that build it.

Alpaca rows, OpenAI-style ``messages``, ShareGPT ``conversations``, prompt/completion rows and classification
rows (a text and its ``label``) all become one :class:`InstructionRecord`, so every renderer, adapter and metric
works with every source.

Preference rows (``preference`` format, docs/preference.md) become records too: a pair (``prompt`` or
``messages``, ``chosen``, ``rejected``) keeps the chosen answer as its last assistant turn and the rejected one in
``rejected``; an unpaired row (KTO: ``completion`` with a true / false ``label``) keeps its completion as the last
assistant turn and the label in ``desirable``. A pair is one record everywhere (dedup, cleaning, the split).
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
FORMATS = ("auto", "alpaca", "messages", "sharegpt", "prompt-completion", "classification", "preference")
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "function_response": "tool",
}
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
    #: A preference pair's rejected answer (the chosen one is the last assistant turn of ``messages``).
    rejected: Message | None = None
    #: An unpaired preference record's judgement of its last assistant turn (KTO: desirable or not).
    desirable: bool | None = None

    @property
    def preference(self) -> str | None:
        """``"pair"`` (chosen and rejected), ``"unpaired"`` (one completion judged desirable or not) or None."""
        if self.rejected is not None:
            return "pair"
        return "unpaired" if self.desirable is not None else None

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the last assistant turn: for preference records, the prompt both completions
        share."""
        return self.messages[:-1]

    @property
    def completions(self) -> list[Message]:
        """A preference record's completions, in order (chosen then rejected, or the one unpaired completion);
        the last assistant turn alone for other records."""
        return [self.messages[-1], *([self.rejected] if self.rejected is not None else [])]

    def with_answer(self, answer: Message) -> InstructionRecord:
        """This record's prompt followed by ``answer`` as the last assistant turn (no preference fields)."""
        return InstructionRecord(
            self.id,
            self.source,
            [*self.prompt_messages, answer],
            task=self.task,
            label=self.label,
            choices=self.choices,
            metadata=self.metadata,
        )

    def prompt_key(self) -> str:
        """A hash of the prompt alone (whitespace-normalised): the split keeps every record of one prompt on one
        side, so a prompt's pairs never sit on both sides of train / eval."""
        return _content_hash(self.prompt_messages)

    @property
    def answer(self) -> str:
        """The final assistant turn: the reference for generation metrics."""
        for message in reversed(self.messages):
            if message.role == "assistant":
                return message.content
        return ""

    def content_key(self) -> str:
        """A hash of what the model sees (roles and text), used to keep eval examples out of training. A pair's
        key covers its rejected answer too (the same prompt and chosen answer with another rejected one is
        another pair), an unpaired record's its judgement."""
        if self.preference is None:
            return _content_hash(self.messages)
        extra = [self.rejected] if self.rejected is not None else []
        return _content_hash([*self.messages, *extra], str(self.desirable))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "source": self.source,
            "task": self.task,
            "label": self.label,
            "choices": self.choices,
            "metadata": self.metadata,
            "messages": [m.to_record_dict() for m in self.messages],
        }
        if self.rejected is not None:
            out["rejected"] = self.rejected.to_record_dict()
        if self.desirable is not None:
            out["desirable"] = self.desirable
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstructionRecord:
        """A record from :meth:`to_dict`'s output."""

        def message(m: Mapping[str, Any]) -> Message:
            calls = m.get("tool_calls")
            return Message(
                m["role"],
                m["content"],
                train=m.get("train"),
                tool_calls=tuple(dict(c) for c in calls) if calls is not None else None,
                name=m.get("name"),
                tool_call_id=m.get("tool_call_id"),
            )

        rejected = data.get("rejected")
        return cls(
            id=data["id"],
            source=data["source"],
            task=data.get("task"),
            label=data.get("label"),
            choices=data.get("choices"),
            metadata=dict(data.get("metadata") or {}),
            messages=[message(m) for m in data["messages"]],
            rejected=message(rejected) if rejected is not None else None,
            desirable=data.get("desirable"),
        )


def _content_hash(messages: list[Message], *extra: str) -> str:
    text = json.dumps([[m.role, " ".join(m.content.split())] for m in messages] + list(extra))
    return hashlib.sha256(text.encode()).hexdigest()


class RowError(ValueError):
    """A row does not fit the declared format; sources turn this into a DataError with file and line."""


def detect_format(row: Mapping[str, Any]) -> str:
    """Guess a row's format from its keys."""

    def has(key: str) -> bool:  # datasets fills a column missing from a row with None
        return row.get(key) is not None

    label = row.get("label")
    if has("rejected") or (
        has("completion")
        and (isinstance(label, bool) or (isinstance(label, str) and label.strip().lower() in ("true", "false")))
    ):
        return "preference"  # a pair, or an unpaired (KTO) completion judged true / false
    if has("chosen"):
        raise RowError(
            "the row has 'chosen' but no 'rejected'; a preference pair needs both (an unpaired row "
            "has 'completion' and a true / false 'label')"
        )
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
        "'messages', 'conversations' (sharegpt), 'prompt'+'completion', 'text'+'label' (classification) or "
        "'prompt'/'messages'+'chosen'+'rejected' (preference); "
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
            if (
                role != "assistant"
                or not isinstance(tool_calls, list)
                or not all(isinstance(c, Mapping) for c in tool_calls)
            ):
                raise RowError(f"turn {i}: 'tool_calls' must be a list of objects on an assistant turn")
            tool_calls = tuple(dict(c) for c in tool_calls)
        name, call_id = turn.get("name"), turn.get("tool_call_id")
        out.append(
            Message(
                role,
                content,
                train=train,
                tool_calls=tool_calls,
                name=str(name) if name is not None else None,
                tool_call_id=str(call_id) if call_id is not None else None,
            )
        )
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


_TRUE, _FALSE = ("true", "1", "yes", "desirable"), ("false", "0", "no", "undesirable")


def _judgement(value: Any) -> bool | None:
    """An unpaired row's label as a bool (true / false, 1 / 0, also as text, as CSV files have it), else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    return None


def _turns(value: Any, key: str) -> list[Message]:
    """A prompt or completion given as text, one ``{role, content}`` object or a list of them."""
    if isinstance(value, str):
        return [Message("assistant" if key != "prompt" else "user", value)]
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RowError(f"field {key!r} must be a string or a non-empty list of {{role, content}} turns")
    try:
        return _messages(value, "role", "content", None)
    except RowError as exc:
        raise RowError(f"field {key!r}: {exc}") from None


def _same_turn(a: Message, b: Message) -> bool:
    return a.role == b.role and " ".join(a.content.split()) == " ".join(b.content.split())


def _completion(value: Any, key: str, prompt: list[Message]) -> Message:
    """One assistant answer. A conversation that repeats the prompt (UltraFeedback ships ``chosen`` as the whole
    conversation) has the prompt taken off first."""
    turns = _turns(value, key)
    if len(turns) > len(prompt) and all(_same_turn(a, b) for a, b in zip(turns, prompt, strict=False)):
        turns = turns[len(prompt) :]
    if len(turns) != 1 or turns[0].role != "assistant":
        raise RowError(f"field {key!r} must be one assistant answer (after the prompt), got {[t.role for t in turns]}")
    return turns[0]


def _preference(row: Mapping[str, Any]) -> tuple[list[Message], dict[str, Any]]:
    """A pair (``chosen`` + ``rejected``) or an unpaired completion (``completion`` + true / false ``label``) after
    a prompt: ``prompt`` (text or turns), or ``messages`` (the prompt turns; a final assistant turn there is the
    chosen answer when ``chosen`` is absent), or none, when ``chosen`` and ``rejected`` are whole conversations
    whose shared beginning is the prompt (TRL's implicit prompt)."""
    has = {key: row.get(key) is not None for key in ("prompt", "messages", "chosen", "rejected", "completion")}
    if has["prompt"] and has["messages"]:
        raise RowError("a preference row has either 'prompt' or 'messages', not both")
    if has["rejected"] and has["completion"]:
        raise RowError(
            "a preference row is a pair ('chosen' + 'rejected') or unpaired ('completion' + 'label'), not both"
        )
    prompt = _turns(row["prompt"], "prompt") if has["prompt"] else []
    if has["messages"]:
        prompt = _turns(row["messages"], "messages")
    chosen_value = row.get("chosen")
    if has["rejected"] and not has["chosen"] and prompt and prompt[-1].role == "assistant":
        chosen_value, prompt = [prompt[-1].to_dict()], prompt[:-1]  # messages + rejected, as ift writes pairs
    if not prompt and has["chosen"] and has["rejected"]:
        chosen_turns, rejected_turns = _turns(row["chosen"], "chosen"), _turns(row["rejected"], "rejected")
        shared = 0
        while shared < min(len(chosen_turns), len(rejected_turns)) - 1 and _same_turn(
            chosen_turns[shared], rejected_turns[shared]
        ):
            shared += 1
        prompt = chosen_turns[:shared]
    if not prompt:
        raise RowError(
            "a preference row needs a prompt: 'prompt', 'messages', or 'chosen' and 'rejected' "
            "conversations that begin with it"
        )
    if prompt[-1].role == "assistant":
        raise RowError("the prompt of a preference row must not end with an assistant turn")
    if has["rejected"]:
        if chosen_value is None:
            raise RowError("missing field 'chosen'")
        chosen = _completion(chosen_value, "chosen", prompt)
        return [*prompt, chosen], {"rejected": _completion(row["rejected"], "rejected", prompt)}
    if not has["completion"]:
        raise RowError(
            "a preference row needs 'chosen' and 'rejected' (a pair) or 'completion' and a true / false "
            "'label' (unpaired)"
        )
    desirable = _judgement(row.get("label"))
    if desirable is None:
        raise RowError(f"field 'label' of an unpaired preference row must be true or false, got {row.get('label')!r}")
    return [*prompt, _completion(row["completion"], "completion", prompt)], {"desirable": desirable}


def normalize_row(
    row: Mapping[str, Any], fmt: str = "auto", *, system: str | None = None
) -> tuple[list[Message], dict[str, Any]]:
    """Turn one raw row into messages plus the extra fields (label, choices, task, metadata)."""
    if fmt == "auto":
        fmt = detect_format(row)
    preference: dict[str, Any] = {}
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
    elif fmt == "preference":
        messages, preference = _preference(row)
    else:
        raise RowError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if system and messages[0].role != "system":
        messages.insert(0, Message("system", system))
    if messages[-1].role != "assistant":
        raise RowError("the last turn must be the assistant's answer")
    if not any(m.trained for m in messages):
        raise RowError('no assistant turn is trained (every one has "train": false)')
    extras: dict[str, Any] = {}
    for key in ("label", "task"):
        if row.get(key) is not None and not (fmt == "preference" and key == "label"):
            extras[key] = str(row[key])
    extras.update(preference)
    if fmt == "classification":
        extras["label"] = messages[-1].content  # validated and stripped
    if row.get("choices") is not None:
        if not isinstance(row["choices"], list):
            raise RowError("field 'choices' must be a list")
        extras["choices"] = [str(c) for c in row["choices"]]
    if isinstance(row.get("metadata"), Mapping):
        extras["metadata"] = dict(row["metadata"])
    return messages, extras
