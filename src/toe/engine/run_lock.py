"""One run per output folder: an exclusive lock on the run folder for the life of the process.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<folder>/.toe-run.lock``. The operating system
drops it when the process ends, however it ends (SIGKILL included), so a killed run never leaves a
stale lock; it is not inherited by forked children (DataLoader workers), so workers that outlive a
killed main process do not keep the folder locked. NFS (v3 with lockd, v4) supports these locks;
on a file system that does not (``ENOLCK``, Lustre without ``-o flock``), the run goes on with a
warning. The file holds the holder's host, pid and start time, for the message of the process
that is turned away. It is never deleted: deleting a lock file races with a process that opened it.

Under torchrun only the main process (rank 0) takes the lock: it is the only one that writes the
folder. Locks are re-entrant within a process (EfficientTrain's stages lock the same folder in turn)
and released by :func:`release_run_folders` at the end of a command, or when the process ends.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError

LOCK_NAME = ".toe-run.lock"
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}

_held: dict[Path, int] = {}  # resolved folder -> descriptor of its lock file, in this process


def lock_run_folder(folder: str | Path, flag: str, check: Callable[[], None] | None = None) -> None:
    """Lock ``folder`` (it must exist) for this process; :class:`UserError` naming the holder when another
    process has it. ``flag`` names the folder's command-line flag in the message. ``check`` runs once the
    lock is held and before this process records itself as the holder: if it raises, the lock is
    released and the lock file is left as it was."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _held:
        return
    path = folder / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise UserError(f"{flag} {folder}: cannot create {LOCK_NAME} ({error.strerror})") from None
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(descriptor)
        if error.errno in (errno.EACCES, errno.EAGAIN):
            raise UserError(
                f"{flag} {folder} is in use by another run ({_describe_holder(path)}); two runs in one folder "
                "would mix their logs and checkpoints: wait for it to end or choose another folder"
            ) from None
        if error.errno in _UNSUPPORTED:
            print(
                f"warning: {flag} {folder}: the file system does not support locks ({error.strerror}); "
                "nothing stops a second run from writing into this folder",
                file=sys.stderr,
            )
            return
        raise UserError(f"{flag} {folder}: cannot lock {LOCK_NAME} ({error.strerror})") from None
    if check is not None:
        try:
            check()
        except BaseException:
            os.close(descriptor)
            raise
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)
    except OSError as error:
        os.close(descriptor)
        raise UserError(f"{flag} {folder}: cannot write {LOCK_NAME} ({error.strerror})") from None
    _held[key] = descriptor


def release_run_folders() -> None:
    """Release every run folder this process locked (the end of a command run in-process)."""
    while _held:
        _, descriptor = _held.popitem()
        os.close(descriptor)  # closing the descriptor drops its POSIX lock


def held_run_folders() -> list[Path]:
    """The folders this process holds locked."""
    return list(_held)


def _describe_holder(path: Path) -> str:
    """'host h, pid 12, since ...' from the lock file (written by the holder right after locking)."""
    try:
        holder = json.loads(path.read_text())
        return f"host {holder['host']}, pid {holder['pid']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"
