"""Credentials never leave the process in text ift writes: error lines, ``status.json``, logs, manifests.

Two kinds are recognised wherever they appear in a string: the user-info part of a URL
(``https://user:token@host`` becomes ``https://***@host``, as in ``HF_ENDPOINT``, proxy variables and
database URLs) and tokens with a well-known shape (Hugging Face, OpenAI-style, GitHub, AWS access keys).

ift masks them in its own messages (every :class:`~ift.errors.IftError`, ``status.json``, ``events.jsonl``, the
manifest, the run-directory lock) and, once :func:`install` has run (``ift`` on the command line and every
:class:`~ift.pipeline.Run` call it), in every log record and warning of the process: libraries such as
``huggingface_hub`` log the URLs they retry, ``HF_ENDPOINT``'s credentials included. Text a library writes
straight to ``sys.stderr`` without logging or warnings is not seen.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

#: ``scheme://user:password@`` or ``scheme://token@``: everything between ``://`` and ``@`` is the secret.
URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"]+)@")
TOKEN = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}|\bsk-[A-Za-z0-9_-]{20,}|\bgh[pousr]_[A-Za-z0-9]{30,}|"
    r"\bgithub_pat_[A-Za-z0-9_]{30,}|\bAKIA[0-9A-Z]{16}\b"
)
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


def _redacting_record_factory(previous: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it itself when the record is emitted
            return record
        if has_credentials(message):
            record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if has_credentials(text):  # handlers print exc_text when it is set; otherwise their own formatting
                record.exc_text = redact(text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    factory._ift_redacting = True  # type: ignore[attr-defined]
    return factory


def _redacting_showwarning(previous: Any) -> Any:
    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        if has_credentials(text):
            message = redact(text)  # a str: a Warning subclass may need other constructor arguments
        previous(message, category, filename, lineno, file, line)

    showwarning._ift_redacting = True  # type: ignore[attr-defined]
    return showwarning


def install() -> None:
    """From now on, mask credentials in every log record made and every warning shown in this process.

    Idempotent; it wraps the record factory and ``warnings.showwarning`` in place at the time of the call, so a
    later ``warnings.catch_warnings()`` block (which restores the function it found) is covered only by a new
    call."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_ift_redacting", False):
        logging.setLogRecordFactory(_redacting_record_factory(factory))
    if not getattr(warnings.showwarning, "_ift_redacting", False):
        warnings.showwarning = _redacting_showwarning(warnings.showwarning)
