"""``python -m toe ...``: the ``toe`` command (its twin where another ``toe`` program, ncurses', comes first)."""

from .cli import entry_point

entry_point()
