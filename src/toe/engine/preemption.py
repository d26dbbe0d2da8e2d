"""Pre-emption: stop at the next optimizer update with a checkpoint when the scheduler asks.

SLURM and Kubernetes stop a job with SIGTERM and, after a grace period, SIGKILL; SLURM can also send
SIGUSR1 ahead of its time limit (``#SBATCH --signal=USR1@180``). While training, :class:`PreemptionWatch`
turns either signal into a request; the epoch loop finishes the step it is in (up to the optimizer
update), writes a mid-epoch checkpoint atomically, logs it and raises :class:`Preempted`, which the
command ends with :data:`REQUEUE_STATUS` (128 + SIGTERM, the status of a process that SIGTERM ended,
which schedulers and the run scripts take as "requeue me"). ``--auto-resume`` then continues bit for
bit as after a kill.

Under torchrun every process must stop at the same update: the request is OR-ed over the processes
at every update through a small gloo group (CPU only, so that a GPU step is not synchronised for it).
DataLoader workers leave both signals to their main process (a scheduler signals every process of the
job): it decides when to stop, and shuts them down. A SIGTERM from the main process itself (its
DataLoader, or ``multiprocessing`` at exit, ending a worker) still ends a worker, so that no exit waits
for a worker that will not end.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, cast

import torch
import torch.distributed as torch_dist

from .distributed import DistInfo

REQUEUE_STATUS = 128 + signal.SIGTERM  # 143
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Training stopped on a scheduler's signal after writing its checkpoint; exit with REQUEUE_STATUS."""


class PreemptionWatch:
    """While entered (in the main thread), SIGTERM and SIGUSR1 set :attr:`signal_name` instead of ending
    the process; :meth:`requested` tells every process alike whether any of them got one."""

    def __init__(self, dist: DistInfo) -> None:
        self.dist = dist
        self.signal_name: str | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        self._group: torch_dist.ProcessGroup | None = None

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._note)
        if self.dist.enabled:
            cpu_collectives = torch_dist.get_backend() == "gloo"
            # every process is a member of the group: new_group gives it, not NON_GROUP_MEMBER
            self._group = (
                None if cpu_collectives else cast(torch_dist.ProcessGroup, torch_dist.new_group(backend="gloo"))
            )
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _note(self, number: int, frame) -> None:
        self.signal_name = signal.Signals(number).name

    def requested(self) -> bool:
        """Whether this process, or under torchrun any process, got a signal (a collective: every process
        calls it at the same update)."""
        if not self.dist.enabled:
            return self.signal_name is not None
        flag = torch.tensor([0 if self.signal_name is None else 1], dtype=torch.int32)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX, group=self._group)
        if flag.item() and self.signal_name is None:
            self.signal_name = "a signal to another process"
        return bool(flag.item())


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: a worker leaves SIGTERM / SIGUSR1 from a scheduler to its main process,
    but ends on a SIGTERM from the main process. SIGTERM is blocked and taken by a thread that reads who sent
    it (``sigwaitinfo``); nothing else in the worker runs a handler."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), daemon=True).start()


def _end_on_sigterm_from(main_process: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == main_process:
            os._exit(REQUEUE_STATUS)  # as SIGTERM itself would end the worker
