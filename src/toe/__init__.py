"""Token Expansion (ToE): train Vision Transformers faster on a growing set of tokens.

Public API::

    from toe import TokenSelect, apply_toe, remove_toe
"""

from . import models  # noqa: F401  (registers the LV-ViT family in timm's registry)
from .integration import apply_toe, has_toe, remove_toe
from .schedule import ToESchedule, TokenCounts
from .token_select import TokenSelect, seed_positions

__all__ = ["TokenSelect", "ToESchedule", "TokenCounts", "apply_toe", "remove_toe", "has_toe", "seed_positions"]
__version__ = "0.1.0"
