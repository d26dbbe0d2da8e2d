"""Token Expansion (ToE): train Vision Transformers faster on a growing set of tokens.

Public API::

    from toe import TokenSelect, apply_toe, remove_toe
    from toe import apply_vpt, remove_vpt   # Visual Prompt Tuning, with or without ToE
    from toe.functional import select_tokens, merge_tokens, gather_tokens, random_tokens
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from . import functional, models  # noqa: F401  (models: registers the LV-ViT family in timm's registry)
from .functional import seed_positions
from .integration import apply_toe, has_toe, remove_toe
from .schedule import ToESchedule, TokenCounts
from .token_select import TokenSelect
from .vpt import apply_vpt, has_vpt, remove_vpt

__all__ = [
    "TokenSelect",
    "ToESchedule",
    "TokenCounts",
    "apply_toe",
    "remove_toe",
    "has_toe",
    "apply_vpt",
    "remove_vpt",
    "has_vpt",
    "seed_positions",
    "functional",
]
try:  # written once, in pyproject.toml
    __version__ = _version("toe")
except PackageNotFoundError:  # run from the source tree (PYTHONPATH=src) without installing
    __version__ = "0+source"
