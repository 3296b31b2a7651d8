"""Credentials never leave the process in text ift writes: error lines, ``status.json``, logs, manifests.

Two kinds are recognised wherever they appear in a string: the user-info part of a URL
(``https://user:token@host`` becomes ``https://***@host``, as in ``HF_ENDPOINT``, proxy variables and
database URLs) and tokens with a well-known shape (Hugging Face, OpenAI-style, GitHub, AWS access keys).
"""

from __future__ import annotations

import re
from typing import Any

#: ``scheme://user:password@`` or ``scheme://token@``: everything between ``://`` and ``@`` is the secret.
URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"]+)@")
TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}|\bsk-[A-Za-z0-9_-]{20,}|\bgh[pousr]_[A-Za-z0-9]{30,}|"
                   r"\bgithub_pat_[A-Za-z0-9_]{30,}|\bAKIA[0-9A-Z]{16}\b")
MASK = "***"


def redact(text: str) -> str:
    """``text`` with URL credentials and token-shaped strings replaced by ``***``."""
    if not text:
        return text
    text = URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return TOKEN.sub(MASK, text)


def has_credentials(text: str) -> bool:
    """Whether ``text`` holds a URL with user-info or a token-shaped string."""
    return bool(URL_USERINFO.search(text) or TOKEN.search(text))


def redact_value(value: Any) -> Any:
    """:func:`redact` applied to every string inside a JSON-like value (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value
