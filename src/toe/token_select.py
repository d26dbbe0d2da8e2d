"""TokenSelect: the Token Expansion algorithm (initialization, expansion, merging) as one module.

The module maps tokens ``x`` [B, N, C] (N = prefix + P patch tokens) to ``tokens`` [B, prefix + M, C]
plus ``index`` [B, prefix + M], the input position of every output token. It knows nothing about
models or training: the integration decides where to call it and the engine sets the stage.

Besides ToE itself (``reduction="toe"``) it offers the two ablations of the paper with the same token
count M per stage, for comparisons at equal compute: ``"toe-drop"`` (ToE's selection, the tokens left
out are discarded instead of merged) and ``"random"`` (a fresh uniformly random subset of M patch tokens
per image and call, drawn from torch's global generator, so a run's seed and its checkpointed RNG
state make it reproducible).

Implementation notes (docs/token-expansion-spec.md sections 5-8):
- the scoring (which tokens to add, where to merge the rest) runs without gradient and in float32;
  gradients reach every input token through row gathers and the mean of the merge;
- similarity maxima and their arg-max are updated incrementally when a sub-step adds tokens, which
  gives the same result as recomputing them against the whole selected set;
- all gathers work on a flattened [B*N, C] view with [B*M] row indices, never [B, N, C] index tensors;
- seeds and their complement are cached per (P, device); sub-step sizes per (P, stage).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

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
            raise ValueError(f"--token-reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        if distance not in DISTANCES:
            raise ValueError(f"--distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if seeding not in SEEDINGS:
            raise ValueError(f"--seeding must be one of {', '.join(SEEDINGS)}, got {seeding!r}")
        self.schedule = ToESchedule(expansion_step, keep_rate, initialization_keep_rate, expansion_multiple_stage)
        self.distance = distance
        self.seeding = seeding
        self.sparse_eval = sparse_eval
        self.reduction = reduction
        self._stage = 0
        self._seed_cache: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._substep_cache: dict[tuple[int, int], tuple[int, ...]] = {}
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
        (``random``: the drawn patches in random order).
        """
        if not self.is_active:
            return x, None
        num_patches = x.shape[1] - num_prefix_tokens
        if self.reduction == "random":
            return _gather(x, num_prefix_tokens, self._random_kept(x.shape[0], num_patches, x.device))
        seeds, rest = self._seeds(num_patches, x.device)
        with torch.no_grad():
            kept, slot = self._select(x[:, num_prefix_tokens:], seeds, rest, self._substeps(num_patches))
        if self.reduction == "toe-drop":
            return _gather(x, num_prefix_tokens, kept)
        return _merge(x, num_prefix_tokens, kept, slot)

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
        num_patches = x.shape[1] - num_prefix_tokens
        if self.reduction == "random":
            kept = self._random_kept(x.shape[0], num_patches, x.device)
        else:
            seeds, rest = self._seeds(num_patches, x.device)
            kept, slot = self._select(x[:, num_prefix_tokens:], seeds, rest, self._substeps(num_patches))
            if self.reduction == "toe":
                return kept, slot
        own_slot = torch.arange(kept.shape[1], device=kept.device).expand_as(kept)
        slot = torch.full((x.shape[0], num_patches), -1, dtype=torch.long, device=kept.device)
        return kept, slot.scatter_(1, kept, own_slot)

    def _random_kept(self, batch: int, num_patches: int, device: torch.device) -> torch.Tensor:
        """A uniformly random subset of M patch positions per image, M as ToE's: [B, M] (global RNG)."""
        kept = self._seeds(num_patches, device)[0].numel() + sum(self._substeps(num_patches))
        return torch.rand(batch, num_patches, device=device).argsort(dim=1)[:, :kept]

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
        if torch.compiler.is_compiling():  # become graph constants
            return self._make_seeds(num_patches, device)
        if key not in self._seed_cache:
            self._seed_cache[key] = self._make_seeds(num_patches, device)
        return self._seed_cache[key]

    def _make_seeds(self, num_patches: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        seeds = _seed_list(num_patches, self.schedule.initialization_keep_rate, self.seeding)
        chosen = set(seeds)
        rest = [i for i in range(num_patches) if i not in chosen]
        return torch.tensor(seeds, device=device), torch.tensor(rest, device=device)

    def _select(
        self, patches: torch.Tensor, seeds: torch.Tensor, rest: torch.Tensor, substeps: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy expansion and merge assignment (no gradient).

        Args:
            patches: [B, P, C] patch tokens; seeds: [n0] and rest: [P - n0] patch positions.
        Returns:
            kept: [B, M] patch positions in output order; slot: [B, P] the output slot (0..M-1) of
            every patch: its own slot if kept, else that of the kept token it is merged into.
        """
        batch, num_patches, _ = patches.shape
        with torch.autocast(patches.device.type, enabled=False):
            features = patches if patches.dtype in (torch.float32, torch.float64) else patches.float()
            if self.distance == "cosine":
                features = F.normalize(features, dim=-1)
            kept = seeds.expand(batch, -1)
            unselected = rest.expand(batch, -1)
            # best[b, p]: similarity of patch p to its most similar kept token; owner: that token's slot
            best, owner = self._similarity(features, kept).max(dim=-1)
            best_u, owner_u = best.gather(1, unselected), owner.gather(1, unselected)
            for m in substeps:
                order = torch.argsort(best_u, dim=1, stable=True)
                unselected, best_u, owner_u = (t.gather(1, order) for t in (unselected, best_u, owner_u))
                added, unselected = unselected[:, :m], unselected[:, m:]
                best_u, owner_u = best_u[:, m:], owner_u[:, m:]
                offset = kept.shape[1]
                kept = torch.cat((kept, added), dim=1)
                if unselected.shape[1] == 0:
                    break
                new_best, new_owner = self._similarity(features, added).max(dim=-1)
                new_best_u = new_best.gather(1, unselected)
                closer = new_best_u > best_u
                best_u = torch.where(closer, new_best_u, best_u)
                owner_u = torch.where(closer, new_owner.gather(1, unselected) + offset, owner_u)
        own_slot = torch.arange(kept.shape[1], device=kept.device).expand(batch, -1)
        slot = torch.empty(batch, num_patches, dtype=torch.long, device=kept.device)
        slot.scatter_(1, kept, own_slot).scatter_(1, unselected, owner_u)
        return kept, slot

    def _similarity(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Similarity [B, P, n] of every patch to the patches at ``positions`` [B, n] (higher = closer)."""
        chosen = _gather_rows(features, positions)
        if self.distance == "cosine":
            return features @ chosen.transpose(1, 2)
        p = 2.0 if self.distance == "euclidean" else 1.0
        return -torch.cdist(features, chosen, p=p, compute_mode="donot_use_mm_for_euclid_dist")


def seed_positions(num_patches: int, initialization_keep_rate: float, seeding: str = "reference") -> torch.Tensor:
    """Seed patch positions [n0] (int64, ascending), n0 = floor(P * R0).

    ``reference``: the first n0 positions i with i % int(1 // R0) == 0 (the published behaviour;
    1 // 0.2 == 4 in floating point). ``uniform``: n0 positions spread evenly over all P.
    """
    return torch.tensor(_seed_list(num_patches, initialization_keep_rate, seeding), dtype=torch.long)


def _seed_list(num_patches: int, initialization_keep_rate: float, seeding: str) -> list[int]:
    count = math.floor(num_patches * initialization_keep_rate)
    if seeding == "reference":
        return list(range(0, num_patches, int(1 // initialization_keep_rate)))[:count]
    if seeding == "uniform":
        return [math.floor((i + 0.5) * num_patches / count) for i in range(count)]
    raise ValueError(f"--seeding must be one of {', '.join(SEEDINGS)}, got {seeding!r}")


def _gather_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x[b, positions[b]] for every b: [B, L, C], [B, n] -> [B, n, C], via a flat row gather."""
    batch, length, channels = x.shape
    flat = (positions + torch.arange(batch, device=x.device).unsqueeze(1) * length).reshape(-1)
    return x.reshape(batch * length, channels).index_select(0, flat).view(batch, -1, channels)


def _gather(x: torch.Tensor, num_prefix_tokens: int, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the prefix tokens and the patches at ``kept`` [B, M]; the others are discarded.

    Args:
        x: [B, N, C] all tokens. Returns tokens [B, prefix + M, C] and their index [B, prefix + M].
    """
    prefix = torch.arange(num_prefix_tokens, device=x.device).expand(x.shape[0], -1)
    index = torch.cat((prefix, kept + num_prefix_tokens), dim=1)
    return _gather_rows(x, index), index


def _merge(
    x: torch.Tensor, num_prefix_tokens: int, kept: torch.Tensor, slot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average every input token into its output slot: one row-wise index_add and a division.

    Args:
        x: [B, N, C] all tokens; kept: [B, M] kept patch positions; slot: [B, P] output slot per patch.
    Returns:
        tokens [B, prefix + M, C] (prefix tokens unchanged) and index [B, prefix + M] (positions in x).
    """
    batch, length, channels = x.shape
    out_len = num_prefix_tokens + kept.shape[1]
    prefix = torch.arange(num_prefix_tokens, device=x.device).expand(batch, -1)
    row_offset = torch.arange(batch, device=x.device).unsqueeze(1) * out_len
    dest = (torch.cat((prefix, slot + num_prefix_tokens), dim=1) + row_offset).reshape(-1)
    accumulate = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    counts = torch.zeros(batch * out_len, device=x.device, dtype=accumulate)
    counts.index_add_(0, dest, torch.ones_like(dest, dtype=accumulate))
    summed = torch.zeros(batch * out_len, channels, device=x.device, dtype=accumulate)
    summed.index_add_(0, dest, x.reshape(batch * length, channels).to(accumulate))
    tokens = (summed / counts.unsqueeze(1)).to(x.dtype).view(batch, out_len, channels)
    return tokens, torch.cat((prefix, kept + num_prefix_tokens), dim=1)
