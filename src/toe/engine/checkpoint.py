"""Checkpoints: atomic writes, a kept previous copy, and validated loads.

A checkpoint is a dict written with ``torch.save`` to a temporary file in the same folder, flushed to
disk and renamed over the target, so a reader never sees half a file. With ``keep_previous`` the file
it replaces is first renamed to ``<name>-prev.pth``, so a checkpoint damaged later (a bad copy, a
full disk elsewhere) still leaves the one before it. Ctrl-C during a write is held until the write is
done (then raised as usual), so an interrupt never leaves a write half made. It holds only plain data
(state_dicts, numbers, strings), so it loads with ``weights_only=True``.

Files of the upstream projects load too: DeiT, the ToE reference repo and EfficientTrain save their flags as
an ``argparse.Namespace`` (the one type besides plain data that ``weights_only`` loading is allowed here);
TokenLabeling's timm saver names the weights ``state_dict``/``state_dict_ema``, its released weights are a
bare state_dict, and its LV-ViT stem keys are renamed to ours (:func:`toe.models.lvvit.rename_upstream_keys`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard, cast

import torch

from ..errors import UserError
from ..files import temporary_path
from ..models.lvvit import rename_upstream_keys
from .failpoints import failpoint

# the types upstream checkpoints hold besides plain data: their flags (DeiT, ToE reference, EfficientTrain, timm)
UPSTREAM_SAFE_GLOBALS: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [argparse.Namespace]
# timm's CheckpointSaver (TokenLabeling) -> our names
TIMM_SAVER_KEYS = {"state_dict": "model", "state_dict_ema": "model_ema", "amp_scaler": "scaler"}

FORMAT = "toe-checkpoint-1"


def previous_path(path: str | Path) -> Path:
    """Where ``save_checkpoint(..., keep_previous=True)`` keeps the replaced file: name-prev.pth."""
    path = Path(path)
    return path.with_name(f"{path.stem}-prev{path.suffix}")


def save_checkpoint(state: dict, path: str | Path, keep_previous: bool = False) -> None:
    """Write ``state`` (plus the format tag) to ``path`` atomically; optionally keep the old file. A write
    that fails (full disk, read-only file system) is a :class:`UserError`; the file it would replace stays."""
    path = Path(path)
    temp = temporary_path(path)
    with _ctrl_c_held():
        _write_atomically(state, path, temp, keep_previous)
    _fsync_folder(path.parent)


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block is done, then act on it as the handler in place would have
    (KeyboardInterrupt by default). Only the main thread can change signal handlers: elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def _write_atomically(state: dict, path: Path, temp: Path, keep_previous: bool) -> None:
    try:
        with open(temp, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        failpoint("checkpoint-write")
        if keep_previous and path.exists():
            os.replace(path, previous_path(path))
        os.replace(temp, path)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError ("unexpected pos")
        reason = getattr(error, "strerror", None) or str(error).splitlines()[0][:200]
        raise UserError(
            f"cannot write {path} ({reason}); the checkpoints written before are kept: "
            "once the folder can be written again (is the disk full?), continue with --auto-resume"
        ) from None
    finally:
        temp.unlink(missing_ok=True)


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


def torch_load(path: str | Path, **kwargs):
    """``torch.load(path, weights_only=True)`` on the CPU that also accepts upstream checkpoints' flags."""
    with torch.serialization.safe_globals(UPSTREAM_SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)


def load_checkpoint(path: str | Path, flag: str = "--resume") -> dict:
    """Load a checkpoint of this project or of an upstream project (see the module docstring) as our layout:
    ``model`` (and, when saved, ``model_ema``, ``optimizer``, ``epoch`` ...), ``args`` as a dict; a bare
    state_dict becomes ``{"model": ...}``. A missing, torn or foreign file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        state = torch_load(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        raise UserError(
            f"{flag} {path} is not a readable checkpoint (truncated or not a torch file: {error})"
        ) from None
    except Exception as error:  # pickle.UnpicklingError and friends: objects we never write
        raise UserError(f"{flag} {path} is not a checkpoint of this project ({type(error).__name__})") from None
    state = as_our_layout(state)
    if state is None:
        raise UserError(f"{flag} {path} is not a checkpoint of this project (no 'model' entry)")
    check_position(state, f"{flag} {path}")
    return state


def as_our_layout(state: object) -> dict | None:
    """A loaded checkpoint in our layout (upstream names mapped, LV-ViT stem keys renamed, ``args`` a dict),
    or None when it holds no model weights."""
    if _is_state_dict(state):
        state = {"model": state}
    if not isinstance(state, dict):
        return None
    state = {TIMM_SAVER_KEYS.get(key, key): value for key, value in state.items()}
    if not isinstance(state.get("model"), dict):
        return None
    for key in ("model", "model_ema"):
        if isinstance(state.get(key), dict):
            state[key] = rename_upstream_keys({k.removeprefix("module."): v for k, v in state[key].items()})
    if isinstance(state.get("args"), argparse.Namespace):
        state["args"] = vars(state["args"])
    return state


def check_position(state: dict, source: str) -> None:
    """The training position a checkpoint records (``epoch``, ``num_updates``, ``partial``) must be one a run
    can continue from: whole numbers, epoch >= -1 (-1: written before the first epoch ended), a mid-epoch
    part of the next epoch. Weights-only files (no ``epoch``) pass."""
    if "epoch" not in state:
        return
    epoch, updates, partial = state["epoch"], state.get("num_updates", 0), state.get("partial")
    if not _whole(epoch) or epoch < -1:
        raise UserError(
            f"{source} records epoch {epoch!r}; a checkpoint records the last finished epoch, a whole number >= -1"
        )
    if not _whole(updates) or updates < 0:
        raise UserError(f"{source} records {updates!r} optimizer updates; expected a whole number >= 0")
    if partial is not None:
        ok = isinstance(partial, dict) and isinstance(partial.get("stats"), dict) and partial.get("rng")
        steps = partial["stats"].get("steps") if ok else None
        if not ok or partial.get("epoch") != epoch + 1 or not _whole(steps) or steps < 0:
            raise UserError(f"{source} holds a damaged mid-epoch record (epoch {epoch}, part {partial!r:.80})")


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def load_weights(path: str | Path, flag: str) -> dict:
    """A model state_dict from a local file or an https URL: a bare state_dict or a checkpoint's weights
    (``model``/``state_dict``, else the EMA's), in our layout (see :func:`as_our_layout`); also timm's and
    Hugging Face's ``.safetensors`` weight files."""
    source = str(path)
    if source.endswith(".safetensors") and not source.startswith(("https://", "http://")):
        return _load_safetensors(Path(source), flag)
    state: dict | None
    if source.startswith(("https://", "http://")):
        try:
            with torch.serialization.safe_globals(UPSTREAM_SAFE_GLOBALS):
                state = torch.hub.load_state_dict_from_url(source, map_location="cpu", check_hash=False)
        except Exception as error:
            raise UserError(f"{flag} {source}: download failed ({error})") from None
    else:
        file = Path(source)
        if not file.is_file():
            raise UserError(f"{flag} {file}: no such file")
        try:
            state = torch_load(file)
        except Exception as error:
            raise UserError(f"{flag} {file} is not a readable weights file ({type(error).__name__})") from None
    if isinstance(state, dict) and "model" not in state and "state_dict" not in state and "model_ema" in state:
        state = {"model": state["model_ema"]}  # an EMA-only file
    state = as_our_layout(state)
    if state is None or not _is_state_dict(state["model"]):
        raise UserError(f"{flag} {source} does not hold model weights")
    return state["model"]


def _load_safetensors(file: Path, flag: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not file.is_file():
        raise UserError(f"{flag} {file}: no such file")
    try:
        state = load_file(str(file))
    except Exception as error:  # safetensors raises its own kinds
        raise UserError(f"{flag} {file} is not a readable weights file ({type(error).__name__})") from None
    if not state:
        raise UserError(f"{flag} {file} does not hold model weights")
    return cast(dict, as_our_layout(state))["model"]  # a state_dict of tensors: never None


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
