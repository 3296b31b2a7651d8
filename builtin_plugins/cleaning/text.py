"""Text helpers shared by the cleaning transforms and the quality report: word tokens, the parts of a
record (instruction, prompt, answer), and the structural checks of a conversation."""

from __future__ import annotations

import re

from ift.records import InstructionRecord

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits and underscores; punctuation separates words)."""
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and collapse whitespace."""
    return " ".join(_WORD.findall(text.lower()))


def instruction(record: InstructionRecord) -> str:
    """The first user turn: what the quality report calls the instruction."""
    return next((m.content for m in record.messages if m.role == "user"), "")


def prompt(record: InstructionRecord) -> str:
    """Every user turn, joined by blank lines (the system prompt is left out: it is usually shared)."""
    return "\n\n".join(m.content for m in record.messages if m.role == "user")


def conversation(record: InstructionRecord) -> str:
    """Every turn, joined by blank lines."""
    return "\n\n".join(m.content for m in record.messages)


def is_eval(record: InstructionRecord) -> bool:
    """Whether the record belongs to an eval-only ``[[data]]`` table (``split = "eval"``)."""
    return record.metadata.get("split") == "eval"


def structure_problem(record: InstructionRecord) -> str | None:
    """Why a conversation is malformed, or None.

    A well-formed record is: an optional system turn first, then user and assistant turns alternating,
    starting with a user turn and ending with an assistant turn.
    """
    messages = record.messages
    if not messages or messages[-1].role != "assistant":
        return "missing output"
    turns = messages[1:] if messages[0].role == "system" else messages
    if not any(m.role == "user" for m in turns):
        return "missing prompt"
    for i, message in enumerate(turns):
        if message.role != ("user", "assistant")[i % 2]:
            return "bad role order"
    return None


# Openings that come before the real instruction verb: "Please write ...", "Could you list ...".
POLITE_PREFIXES = (
    ("i", "would", "like", "you", "to"),
    ("i", "d", "like", "you", "to"),
    ("i", "want", "you", "to"),
    ("i", "need", "you", "to"),
    ("can", "you", "please"),
    ("could", "you", "please"),
    ("can", "you"),
    ("could", "you"),
    ("would", "you"),
    ("will", "you"),
    ("please",),
    ("kindly",),
    ("now",),
    ("help", "me"),
)


def instruction_words(text: str) -> list[str]:
    """The instruction's words with a polite opening removed, so the first word is the one that says
    what to do ("Could you please write a poem" -> ["write", "a", "poem"])."""
    tokens = words(text)
    stripped = True
    while stripped:
        stripped = False
        for prefix in POLITE_PREFIXES:
            if len(tokens) > len(prefix) and tuple(tokens[: len(prefix)]) == prefix:
                tokens = tokens[len(prefix) :]
                stripped = True
                break
    return tokens
