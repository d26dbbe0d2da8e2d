"""Writing a file so that a reader sees the old one or the new one, never half of one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def temporary_path(path: str | Path) -> Path:
    """Where an atomic write of ``path`` writes first: ``.<name>.tmp-<pid>`` beside it (one per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temp)`` on a temporary file beside ``path``, then rename it over ``path`` (atomic on POSIX
    within a folder). The temporary file is removed if the write fails; the old file then stays."""
    temp = temporary_path(path)
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """:func:`write_atomically` of ``text``."""
    write_atomically(path, lambda temp: temp.write_text(text))
