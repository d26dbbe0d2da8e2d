"""Checkpoints: atomic writes, a kept previous copy, and validated loads.

A checkpoint is a dict written with ``torch.save`` to a temporary file in the same folder, flushed to
disk and renamed over the target, so a reader never sees half a file. With ``keep_previous`` the file
it replaces is first renamed to ``<name>-prev.pth``, so a checkpoint damaged later (a bad copy, a
full disk elsewhere) still leaves the one before it. It holds only plain data (state_dicts, numbers,
strings), so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..errors import UserError
from .failpoints import failpoint

FORMAT = "toe-checkpoint-1"


def previous_path(path: str | Path) -> Path:
    """Where ``save_checkpoint(..., keep_previous=True)`` keeps the replaced file: name-prev.pth."""
    path = Path(path)
    return path.with_name(f"{path.stem}-prev{path.suffix}")


def save_checkpoint(state: dict, path: str | Path, keep_previous: bool = False) -> None:
    """Write ``state`` (plus the format tag) to ``path`` atomically; optionally keep the old file."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        failpoint("checkpoint-write")
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary checkpoint files left by a process that was killed while writing."""
    stale = [p for p in folder.glob(".*.pth.tmp-*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_latest(folder: Path, name: str = "checkpoint.pth") -> tuple[dict, Path, str | None] | None:
    """The newest readable checkpoint in ``folder``: ``name``, else its kept previous copy.

    Returns (state, path, note) where ``note`` explains a fallback, or None when neither exists.
    Raises :class:`UserError` when files exist but none is readable.
    """
    candidates = [p for p in (folder / name, previous_path(folder / name)) if p.exists()]
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path, "--auto-resume")
        except UserError as error:
            problems.append(str(error))
            continue
        note = f"{problems[0]}; continuing from {path.name} instead" if problems else None
        return state, path, note
    if problems:
        raise UserError(f"no readable checkpoint in {folder}: {problems[0]}")
    return None


def load_checkpoint(path: str | Path, flag: str = "--resume") -> dict:
    """Load a checkpoint of this project; a missing, torn or foreign file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise UserError(
            f"{flag} {path} is not a readable checkpoint (truncated or not a torch file: {error})"
        ) from None
    except Exception as error:  # pickle.UnpicklingError and friends: objects we never write
        raise UserError(f"{flag} {path} is not a checkpoint of this project ({type(error).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{flag} {path} is not a checkpoint of this project (no 'model' entry)")
    return state


def load_weights(path: str | Path, flag: str) -> dict:
    """A model state_dict from a local file or an https URL: a bare state_dict or a checkpoint's 'model'."""
    source = str(path)
    if source.startswith(("https://", "http://")):
        try:
            state = torch.hub.load_state_dict_from_url(source, map_location="cpu", check_hash=False)
        except Exception as error:
            raise UserError(f"{flag} {source}: download failed ({error})") from None
    else:
        file = Path(source)
        if not file.is_file():
            raise UserError(f"{flag} {file}: no such file")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserError(f"{flag} {file} is not a readable weights file ({type(error).__name__})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{flag} {source} does not hold model weights")
    return state


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
