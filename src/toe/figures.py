"""Writing the pictures of ``toe visualize`` and ``toe plot``: one place for the format and the errors."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from .errors import UserError

DPI = 100


def check_output(path: Path, flag: str = "--out") -> Path:
    """``path`` if its folder exists (check before the work that makes the picture), else a :class:`UserError`."""
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist")
    return path


def save_figure(figure: Figure, path: Path, flag: str = "--out") -> None:
    """Write ``figure`` to ``path`` (format from the suffix, e.g. .png) at :data:`DPI`; mistakes are one line."""
    check_output(path, flag)
    try:
        figure.savefig(path, dpi=DPI)
    except (OSError, ValueError) as error:
        raise UserError(f"{flag} {path} cannot be written ({type(error).__name__}: {error})") from None
