"""The run folder: created and locked for one run (:mod:`toe.engine.run_lock`), the flags saved into it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..engine import (
    DistInfo,
)
from ..engine.run_lock import lock_run_folder
from ..errors import UserError
from ..files import write_text_atomically


def prepare_output_dir(output_dir: str | None, resuming: bool, dist: DistInfo, flag: str) -> Path | None:
    """Create the run folder and lock it for this process (main process; see :mod:`toe.engine.run_lock`);
    refuse a folder that another process uses, or that holds another run unless resuming."""
    if not output_dir:
        return None
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")

    def refuse_another_run() -> None:
        if not resuming and any((path / name).exists() for name in ("checkpoint.pth", "log.txt")):
            raise UserError(
                f"{flag} {path} already holds a run (checkpoint.pth / log.txt); pass --auto-resume to continue it "
                "or choose an empty folder"
            )

    if dist.is_main:
        make_folder(path, flag)
        lock_run_folder(path, flag, check=refuse_another_run)
    else:
        refuse_another_run()
    return path


def make_folder(path: Path, flag: str) -> None:
    """``mkdir -p path``; a folder that cannot be made (read-only or full file system, a file on the
    way, no permission) is a :class:`UserError` naming ``flag``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {path} cannot be created ({error.strerror or error})") from None


def plain_args(args: argparse.Namespace) -> dict:
    """The flags as plain data (saved in checkpoints and args.json)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}


def save_args(path: Path | None, args: argparse.Namespace, dist: DistInfo, name: str = "args.json") -> None:
    """Write the flags to ``path/name`` (main process, atomically)."""
    if path is not None and dist.is_main:
        write_text_atomically(path / name, json.dumps(plain_args(args), indent=2) + "\n")
