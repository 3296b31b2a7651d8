"""Checks on files a recipe names, so that each way a path can be wrong is named as what it is."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ift.errors import DataError
from ift.rundir import atomic_write

#: Public: plugins and builtin commands may import these names (see ift.PUBLIC_MODULES).
__all__ = ["atomic_write", "check_data_file"]


def check_data_file(path: Path, what: str = "data file", context: str = "") -> None:
    """Raise a :class:`DataError` naming ``path`` unless it is a readable regular file: missing, a broken
    symlink, a symlink loop, a directory, or something else (a FIFO, a device) each get their own words.
    ``context`` (e.g. ``"(source 'train')"``) is appended to the message."""

    def fail(message: str) -> DataError:
        return DataError(f"{message} {context}".rstrip(), file=str(path))

    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise fail(f"{what} is a symlink loop (the links point at each other)") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if path.is_symlink():
                raise fail(
                    f"{what} is a broken symlink (it points to {os.readlink(path)!r}, which does not exist)"
                ) from None
            raise fail(f"{what} not found") from None
        raise fail(f"cannot read {what}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise fail(f"{what} is a directory; give the path of a file inside it")
    if not stat.S_ISREG(mode):
        raise fail(f"{what} is not a regular file (a pipe, socket or device)")
    if not os.access(path, os.R_OK):
        raise fail(f"cannot read {what}: permission denied")
