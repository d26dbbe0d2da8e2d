"""Writing the pictures of ``toe visualize`` and ``toe plot``: one place for the format and the errors."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import cast

from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from .errors import UserError

DPI = 100


def palette(name: str) -> tuple[tuple[float, float, float], ...]:
    """The RGB colours of one of matplotlib's qualitative colour maps (a ListedColormap of RGB tuples)."""
    return cast(tuple[tuple[float, float, float], ...], cast(ListedColormap, colormaps[name]).colors)


def check_output(path: Path, flag: str = "--out") -> Path:
    """``path`` (with ``.png`` added when it has no suffix, as matplotlib would) if it can be a file in an
    existing folder (check before the work that makes the picture), else a :class:`UserError`."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give the name of a file in it")
    path = path if path.suffix else path.with_name(f"{path.name}.png")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist")
    try:  # a read-only or full file system, no permission: found now, not after the work
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UserError(f"{flag} {path} cannot be written ({error.strerror or error})") from None
    return path


def save_figure(figure: Figure, path: Path, flag: str = "--out") -> Path:
    """Write ``figure`` to ``path`` (format from the suffix, .png without one) at :data:`DPI`; returns the
    path written. Mistakes are one line."""
    path = check_output(path, flag)
    try:
        figure.savefig(path, dpi=DPI)
    except (OSError, ValueError) as error:
        raise UserError(f"{flag} {path} cannot be written ({type(error).__name__}: {error})") from None
    return path
