"""The ``mask-pii`` transform: replace e-mail addresses, phone numbers and ID-like numbers with a
placeholder such as ``[EMAIL]``.

The patterns aim at few false positives: ordinary numbers (``42``, ``3.14``, ``1,000,000``), years, dates
and times are left alone. Phone numbers need a recognisable shape (``+`` and a country code, North American
``555-123-4567`` / ``(555) 123-4567``, or a trunk ``0`` prefix as in ``020 7946 0958``); card numbers must
pass the Luhn checksum; any other run of ``min_id_digits`` or more digits is an ID number.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, field_validator

import ift

PIIType = Literal["email", "ssn", "credit_card", "phone", "id_number"]
BUILTIN_TYPES: tuple[PIIType, ...] = ("email", "ssn", "credit_card", "phone", "id_number")
Role = Literal["system", "user", "assistant"]

_B, _E = r"(?<![\w.+-])", r"(?![\w-])"  # a value never starts or ends inside a word or a longer number
_BUILTIN = {
    "email": rf"{_B}[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{{2,}}{_E}",
    "ssn": rf"{_B}\d{{3}}-\d{{2}}-\d{{4}}{_E}",
    # 13-19 digits, or groups 4-4-4-4(-1..3) / 4-6-5 separated by spaces or by dashes
    "credit_card": rf"{_B}(?:\d{{13,19}}|\d{{4}}(?: \d{{4}}){{3}}(?: \d{{1,3}})?"
    rf"|\d{{4}}(?:-\d{{4}}){{3}}(?:-\d{{1,3}})?|\d{{4}} \d{{6}} \d{{5}}|\d{{4}}-\d{{6}}-\d{{5}})"
    r"(?!\w|[.,]\d)",
    "phone": (
        r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{2,4}){2,5}(?!\w)"
        rf"|{_B}(?:\(\d{{3}}\) ?|\d{{3}}[-. ])\d{{3}}[-. ]\d{{4}}{_E}"
        rf"|{_B}(?:\(0\d{{1,4}}\) ?|0\d{{1,4}}[ -])\d{{3,4}}[ -]?\d{{3,4}}{_E}"
    ),
}
_MAYBE_BUILTIN = re.compile(r"[\d@]")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


class MaskPIIConfig(ift.ComponentConfig):
    types: list[PIIType] = Field(list(BUILTIN_TYPES), description="Builtin kinds of value to mask.")
    patterns: dict[str, str] = Field(
        default_factory=dict, description="Extra kinds: name -> regular expression; tried before the builtins."
    )
    replacement: str = Field("[{TYPE}]", description="Placeholder; {TYPE} is the upper-cased kind, {type} as named.")
    min_id_digits: int = Field(9, ge=5, description="Shortest digit run masked as an ID number.")
    roles: list[Role] = Field(["system", "user", "assistant"], description="Turns to mask.")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if not name.strip():
                raise ValueError("pattern names must not be empty")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regular expression: {exc}") from None
        return value

    @field_validator("replacement")
    @classmethod
    def _formats(cls, value: str) -> str:
        try:
            value.format(type="x", TYPE="X")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"replacement may only use {{type}} and {{TYPE}}: {exc}") from None
        return value


class MaskPII(ift.Transform):
    """Mask personal data in the configured turns; counts each masked value as a change ``masked <kind>``."""

    name = "mask-pii"
    Config = MaskPIIConfig
    config: MaskPIIConfig

    def __init__(self, config: ift.ComponentConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        c = self.config
        # extra patterns run one by one (their own groups and backreferences keep their numbers)
        self._extra = [(name, re.compile(pattern)) for name, pattern in c.patterns.items()]
        kinds = [(t, _BUILTIN[t]) for t in BUILTIN_TYPES if t in c.types and t in _BUILTIN]
        if "id_number" in c.types:
            kinds.append(("id_number", rf"(?<![\w.,+-])\d{{{c.min_id_digits},}}(?!\w|[.,]\d)"))
        self._kinds = [name for name, _ in kinds]
        # one alternation, scanned once per text; each kind is a named group g0, g1, ... in priority order
        self._regex = re.compile("|".join(f"(?P<g{i}>{p})" for i, (_, p) in enumerate(kinds))) if kinds else None

    def _placeholder(self, kind: str) -> str:
        return self.config.replacement.format(type=kind, TYPE=kind.upper().replace("-", "_"))

    def mask(self, text: str, counts: Counter[str]) -> str:
        """``text`` with every value replaced; ``counts`` gets one per masked value, by kind."""
        for kind, regex in self._extra:
            placeholder = self._placeholder(kind)
            text, n = regex.subn(lambda _, p=placeholder: p, text)  # type: ignore[misc]
            if n:
                counts[kind] += n
        if self._regex is None or not _MAYBE_BUILTIN.search(text):
            return text

        def replace_match(match: re.Match[str]) -> str:
            kind = self._kinds[int(match.lastgroup[1:])] if match.lastgroup else ""
            value = match.group(0)
            if kind == "credit_card" and not luhn_ok(re.sub(r"\D", "", value)):
                if not (
                    value.isdigit() and "id_number" in self.config.types and len(value) >= self.config.min_id_digits
                ):
                    return value  # card-shaped but not a card number: leave it
                kind = "id_number"
            if kind == "phone" and value.startswith("+") and not 8 <= sum(ch.isdigit() for ch in value) <= 15:
                return value
            counts[kind] += 1
            return self._placeholder(kind)

        return self._regex.sub(replace_match, text)

    def apply(self, records: list[ift.InstructionRecord], tally: ift.Tally) -> list[ift.InstructionRecord]:
        roles = set(self.config.roles)
        out = []
        counts: Counter[str] = Counter()
        for record in records:
            masked = [self.mask(m.content, counts) if m.role in roles else m.content for m in record.messages]
            if any(new != m.content for new, m in zip(masked, record.messages, strict=True)):
                messages = [
                    m if new == m.content else replace(m, content=new)
                    for new, m in zip(masked, record.messages, strict=True)
                ]
                record = replace(record, messages=messages)
            rejected = record.rejected  # a preference pair's rejected answer is masked like the chosen one
            if rejected is not None and rejected.role in roles:
                new = self.mask(rejected.content, counts)
                if new != rejected.content:
                    record = replace(record, rejected=replace(rejected, content=new))
            out.append(record)
        for kind, n in counts.items():
            tally.change(f"masked {kind}", n)
        return out
