"""Fault injection for the reliability tests: make this process die at a chosen point, as a kill would.

``TOE_FAILPOINT=name:hit[:rank]`` sends SIGKILL to the process the ``hit``-th time ``failpoint(name)``
runs (on global rank ``rank`` only, when given); ``TOE_FAILPOINT_SIGNAL`` picks another signal (SIGTERM:
a scheduler's pre-emption; SIGSTOP: hold the process still at that point). It fires only in a first
attempt: a worker that torchrun restarted (TORCHELASTIC_RESTART_COUNT > 0) runs on. Points:
``train-step`` (after an optimizer update), ``checkpoint-write`` (a checkpoint fully written to its
temporary file, not yet renamed into place). Unset (the normal case) this costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    spec = os.environ.get("TOE_FAILPOINT")
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    target, hit, *rank = spec.split(":")
    if target != name or (rank and int(rank[0]) != int(os.environ.get("RANK", "0"))):
        return
    _hits[name] += 1
    if _hits[name] == int(hit):
        os.kill(os.getpid(), signal.Signals[os.environ.get("TOE_FAILPOINT_SIGNAL", "SIGKILL")])
