"""Checkpoints: atomic writes and validated loads.

A checkpoint is a dict written with ``torch.save`` to a temporary file in the same folder, flushed to
disk and renamed over the target, so a reader never sees half a file. It holds only plain data
(state_dicts, numbers, strings), so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from ..options import UserError

FORMAT = "toe-checkpoint-1"


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` (plus the format tag) to ``path`` atomically."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


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
