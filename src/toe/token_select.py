"""TokenSelect: Token Expansion as one module, a thin stateful wrapper over :mod:`toe.functional`.

The module maps tokens ``x`` [B, N, C] (N = prefix + P patch tokens) to ``tokens`` [B, prefix + M, C]
plus ``index`` [B, prefix + M], the input position of every output token. It holds what the functions
do not: the schedule (:class:`~toe.schedule.ToESchedule`) and the current stage, the options, the seeds
and sub-step sizes cached per patch count, and the last forward's index (``last_index``, for models
that put the tokens back on their grid). It knows nothing about models or training: the integration
decides where to call it and the engine sets the stage.

Besides ToE itself (``reduction="toe"``) it offers the two ablations of the paper with the same token
count M per stage, for comparisons at equal compute: ``"toe-drop"`` (ToE's selection, the tokens left
out are discarded instead of merged) and ``"random"`` (a fresh uniformly random subset of M patch tokens
per image and call, drawn from torch's global generator, so a run's seed and its checkpointed RNG
state make it reproducible).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .functional import (
    gather_tokens,
    initial_tokens,
    kept_slots,
    merge_tokens,
    random_tokens,
    select_tokens,
)
from .schedule import DISTANCES, REDUCTIONS, SEEDINGS, ToESchedule, TokenCounts


class TokenSelect(nn.Module):
    """Token Expansion: keep a growing, spread-out subset of patch tokens and merge the rest into it.

    Args:
        expansion_step: epoch at which each stage starts (e.g. ``[0, 100, 200]``).
        keep_rate: cumulative fraction of patch tokens kept per stage (e.g. ``[0.5, 0.75, 1.0]``).
        initialization_keep_rate: fraction of patch tokens taken as seeds (e.g. ``0.25``).
        expansion_multiple_stage: greedy sub-steps per stage (K, e.g. ``2``).
        distance: ``"cosine"`` (default), ``"euclidean"`` or ``"manhattan"``.
        seeding: ``"reference"`` (the published raster, default) or ``"uniform"`` (evenly spread).
        sparse_eval: also reduce tokens in eval mode (default: eval is full-token).
        reduction: ``"toe"`` (the paper: merge the tokens left out, default), ``"toe-drop"`` (ToE's
            selection without merging) or ``"random"`` (a random subset of the same size).
    """

    def __init__(
        self,
        expansion_step: Sequence[int] = (0, 100, 200),
        keep_rate: Sequence[float] = (0.5, 0.75, 1.0),
        initialization_keep_rate: float = 0.25,
        expansion_multiple_stage: int = 2,
        distance: str = "cosine",
        seeding: str = "reference",
        sparse_eval: bool = False,
        reduction: str = "toe",
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if seeding not in SEEDINGS:
            raise ValueError(f"seeding must be one of {', '.join(SEEDINGS)}, got {seeding!r}")
        self.schedule = ToESchedule(expansion_step, keep_rate, initialization_keep_rate, expansion_multiple_stage)
        self.distance = distance
        self.seeding = seeding
        self.sparse_eval = sparse_eval
        self.reduction = reduction
        self._stage = 0
        self._seed_cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._substep_cache: dict[tuple[int, int], tuple[int, ...]] = {}
        self.last_index: torch.Tensor | None = None  # the last forward's index (None: tokens unchanged)
        self.update_current_stage(0)

    @property
    def stage(self) -> int:
        """Current stage: 0 before the first expansion step, then 1, 2, ..."""
        return self._stage

    def update_current_stage(self, epoch: int) -> int:
        """Set the stage for ``epoch`` (call once at the start of every epoch) and return it."""
        self._stage = self.schedule.stage(epoch)
        return self._stage

    @property
    def is_active(self) -> bool:
        """Whether a forward call reduces tokens now (stage and train/eval mode)."""
        return self.schedule.is_active(self._stage) and (self.training or self.sparse_eval)

    def token_counts(self, num_patches: int) -> TokenCounts:
        """Seeds, per-stage sub-step sizes and kept tokens M for ``num_patches`` patch tokens."""
        return self.schedule.token_counts(num_patches)

    def extra_repr(self) -> str:
        s = self.schedule
        return (
            f"expansion_step={list(s.expansion_step)}, keep_rate={list(s.keep_rate)}, "
            f"initialization_keep_rate={s.initialization_keep_rate}, "
            f"expansion_multiple_stage={s.expansion_multiple_stage}, distance={self.distance!r}, "
            f"seeding={self.seeding!r}, sparse_eval={self.sparse_eval}, reduction={self.reduction!r}, "
            f"stage={self._stage}"
        )

    def forward(self, x: torch.Tensor, num_prefix_tokens: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reduce ``x`` [B, prefix + P, C] to [B, prefix + M, C] and return it with its index.

        Returns ``(x, None)`` unchanged when inactive; otherwise ``(tokens, index)`` where ``index``
        [B, prefix + M] (int64) holds the input position of every output token: prefix tokens first,
        then seeds (ascending), then the tokens added by each sub-step in the order they were added
        (``random``: the drawn patches in random order). The index is also kept as ``last_index``.
        """
        if not self.is_active:
            self.last_index = None
            return x, None
        kept, slot = self._selection(x, num_prefix_tokens)
        if self.reduction == "toe":
            tokens, index = merge_tokens(x, kept, cast(torch.Tensor, slot), num_prefix_tokens)  # None for random only
        else:
            tokens, index = gather_tokens(x, kept, num_prefix_tokens)
        self.last_index = index
        return tokens, index

    @torch.no_grad()
    def assignment(self, x: torch.Tensor, num_prefix_tokens: int = 1) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The current stage's selection of ``x`` [B, prefix + P, C] without merging (for inspection).

        Runs the same selection as a training-mode ``forward`` (whatever the train/eval mode) and
        returns ``(kept, slot)``: ``kept`` [B, M] the kept patch positions (0..P-1, prefix excluded) in
        output order (seeds, then each sub-step's tokens in the order they were added) and ``slot``
        [B, P] the output slot (0..M-1) of every patch: its own if kept, else that of the kept token
        it is averaged into, or -1 when it is discarded (``toe-drop`` and ``random``; ``random`` draws
        a new subset). ``forward``'s index is ``kept + prefix`` after the prefix positions.
        Returns None when the current stage does not reduce tokens (stage 0 or keep rate 1.0).
        """
        if not self.schedule.is_active(self._stage):
            return None
        kept, slot = self._selection(x, num_prefix_tokens)
        toe_slot = cast(torch.Tensor, slot)  # read for "toe" only; None for random only
        return kept, (toe_slot if self.reduction == "toe" else kept_slots(kept, x.shape[1] - num_prefix_tokens))

    def _selection(self, x: torch.Tensor, num_prefix_tokens: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(kept [B, M], slot [B, P]) of the current stage; slot is None for ``random``."""
        num_patches = x.shape[1] - num_prefix_tokens
        seeds, rest = self._seeds(num_patches, x.device)
        substeps = self._substeps(num_patches)
        if self.reduction == "random":
            return random_tokens(x.shape[0], num_patches, seeds.numel() + sum(substeps), x.device), None
        return select_tokens(x[:, num_prefix_tokens:], seeds, rest, substeps, self.distance)

    def _substeps(self, num_patches: int) -> tuple[int, ...]:
        """Sizes of the sub-steps run in the current stage (zero-size ones dropped), cached."""
        key = (num_patches, self._stage)
        if torch.compiler.is_compiling():  # traced once per stage; a cache would cost a second compile
            return self._count_substeps(num_patches)
        if key not in self._substep_cache:
            self._substep_cache[key] = self._count_substeps(num_patches)
        return self._substep_cache[key]

    def _count_substeps(self, num_patches: int) -> tuple[int, ...]:
        counts = self.schedule.token_counts(num_patches)
        return tuple(m for m in counts.replayed_substeps(self._stage) if m > 0)

    def _seeds(self, num_patches: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Seed patch positions [n0] and the other positions [P - n0] (ascending), cached."""
        key = (num_patches, device)
        initialization_keep_rate = self.schedule.initialization_keep_rate
        if torch.compiler.is_compiling():  # become graph constants
            return initial_tokens(num_patches, initialization_keep_rate, self.seeding, device)
        if key not in self._seed_cache:
            self._seed_cache[key] = initial_tokens(num_patches, initialization_keep_rate, self.seeding, device)
        return self._seed_cache[key]
