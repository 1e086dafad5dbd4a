"""Crash-safe file writes shared by the recorder, the trajectory format, spectra and the
experiments."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path, write) -> None:
    """Call ``write(stream)`` on a binary stream of a temporary file in the same folder, fsync,
    then ``os.replace`` it onto ``path`` (atomic on POSIX and Windows): a reader, or a run
    killed at any point, sees the old file or the complete new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_text(path, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))
