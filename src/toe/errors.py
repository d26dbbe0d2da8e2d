"""The project's user-facing error: the lowest layer, imported by every other module and importing none."""

from __future__ import annotations


class UserError(Exception):
    """A mistake of the user (flag, path, file): reported as one sentence, exit status 2."""
