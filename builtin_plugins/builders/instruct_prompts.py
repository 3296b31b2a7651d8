"""Prompts of the ``self-instruct`` builder and the parsing of what the model writes back."""

from __future__ import annotations

import re

import ift

_TASK_PREFIX = re.compile(r"^\s*(?:task\s*\d*\s*[:.)-]|\d+\s*[.):-](?=\s))?\s*", re.IGNORECASE)


def split_task(record: ift.InstructionRecord) -> tuple[str, str]:
    """A seed's instruction and input (alpaca rows join them with a blank line)."""
    user = next((m.content for m in reversed(record.messages) if m.role == "user"), "")
    instruction, _, input_text = user.partition("\n\n")
    return instruction.strip(), input_text.strip()


def instruction_prompt(examples: list[str], task_description: str | None) -> str:
    goal = f" for this goal: {task_description.strip()}" if task_description else ""
    lines = [
        f"Come up with new, diverse tasks{goal}. Each task is one instruction that can be done with text alone.",
        "",
    ]
    lines += [f"Task {n}: {' '.join(text.split())}" for n, text in enumerate(examples, start=1)]
    return "\n".join([*lines, f"Task {len(examples) + 1}:"])


def parse_instructions(text: str) -> list[str]:
    """Instructions in a completion: one per line, a leading ``Task N:`` or ``N.`` / ``N)`` removed."""
    return [c for c in (_TASK_PREFIX.sub("", line).strip() for line in text.splitlines()) if c]


def instance_prompt(shots: list[tuple[str, str, str]], instruction: str) -> str:
    blocks = [f"Task: {task}\nInput: {input_text or 'none'}\nOutput: {output}" for task, input_text, output in shots]
    return "\n\n".join([*blocks, f"Task: {instruction}\nInput:"])


def parse_instance(text: str) -> tuple[str, str]:
    """(input, output) from a completion of ``Task: ...\\nInput:``; no ``Output:`` means no input."""
    before, marker, after = text.partition("Output:")
    if not marker:
        return "", text.strip()
    input_text = before.strip()
    return ("" if input_text.lower() in ("none", "<noinput>", "n/a") else input_text), after.strip()
