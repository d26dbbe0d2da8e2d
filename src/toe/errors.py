"""The project's user-facing error: the lowest layer, imported by every other module and importing none."""

from __future__ import annotations


class UserError(Exception):
    """A mistake of the user (flag, path, file): reported as one sentence, exit status 2."""


class OutOfMemory(UserError):
    """A recipe's training ran out of device memory; the message names the recipe's flags that lower it."""


def state_dict_mismatch(error: RuntimeError) -> str:
    """The first problem ``load_state_dict`` reports (``Missing key(s) in state_dict: ...``, ``size mismatch
    for head.weight: ...``), for a one-line error; torch's message puts a header line before them."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else type(error).__name__)
