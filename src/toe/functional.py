"""Token Expansion as functions on tensors: the algorithm without state, modules or training.

:class:`toe.TokenSelect` is a thin stateful wrapper over these (stage, caches, the last index), the way
timm's ``PatchDropout`` wraps ``patch_dropout_forward``. A reduction is two calls, a selection (which patch
tokens to keep) and a reduction of the tokens to the kept ones:

- selections return ``kept`` [B, M], patch positions 0..P-1 (prefix tokens not counted):
  :func:`select_tokens` (ToE's greedy expansion from the seeds of :func:`initial_tokens`; also returns
  ``slot`` [B, P], the kept token every patch is nearest to) and :func:`random_tokens` (a uniformly random
  subset per image, the random-dropping baseline);
- reductions map ``x`` [B, prefix + P, C] to ``tokens`` [B, prefix + M, C] and ``index`` [B, prefix + M],
  the input position of every output token (prefix tokens first and unchanged): :func:`merge_tokens`
  (every patch averaged into its slot: ToE) and :func:`gather_tokens` (the kept tokens only: ToE's
  selection without merging, or a random subset).

Errors name the parameters (``distance``, ``seeding``, ...); the command line maps them to its flags.

Implementation notes (docs/token-expansion-spec.md sections 5-8):
- the scoring runs without gradient and in float32; gradients reach every input token through the row
  gathers and the mean of the merge;
- similarity maxima and their arg-max are updated incrementally when a sub-step adds tokens, which gives
  the same result as recomputing them against the whole selected set;
- all gathers work on a flattened [B*N, C] view with [B*M] row indices, never [B, N, C] index tensors;
- nothing waits for the device: token counts come from the schedule, never from the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .schedule import DISTANCES, SEEDINGS

__all__ = [
    "seed_positions",
    "initial_tokens",
    "select_tokens",
    "random_tokens",
    "kept_slots",
    "merge_tokens",
    "gather_tokens",
]


def _seed_list(num_patches: int, initialization_keep_rate: float, seeding: str = "reference") -> list[int]:
    """Seed patch positions (ascending), n0 = floor(P * R0).

    ``reference``: the first n0 positions i with i % int(1 // R0) == 0 (the published behaviour;
    1 // 0.2 == 4 in floating point). ``uniform``: n0 positions spread evenly over all P.
    """
    count = math.floor(num_patches * initialization_keep_rate)
    if seeding == "reference":
        return list(range(0, num_patches, int(1 // initialization_keep_rate)))[:count]
    if seeding == "uniform":
        return [math.floor((i + 0.5) * num_patches / count) for i in range(count)]
    raise ValueError(f"seeding must be one of {', '.join(SEEDINGS)}, got {seeding!r}")


def seed_positions(num_patches: int, initialization_keep_rate: float, seeding: str = "reference") -> torch.Tensor:
    """Seed patch positions [n0] (int64, ascending), see :func:`_seed_list`."""
    return torch.tensor(_seed_list(num_patches, initialization_keep_rate, seeding), dtype=torch.long)


def initial_tokens(
    num_patches: int, initialization_keep_rate: float, seeding: str = "reference", device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeds [n0] and the other patch positions [P - n0] (both ascending, int64), for :func:`select_tokens`.

    Computed on the host, so selecting never waits for the device.
    """
    seeds = _seed_list(num_patches, initialization_keep_rate, seeding)
    chosen = set(seeds)
    rest = [i for i in range(num_patches) if i not in chosen]
    return torch.tensor(seeds, device=device), torch.tensor(rest, device=device)


@torch.no_grad()
def select_tokens(
    patches: torch.Tensor,
    seeds: torch.Tensor,
    rest: torch.Tensor,
    substeps: Sequence[int],
    distance: str = "cosine",
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToE's selection: from the ``seeds``, each sub-step adds the tokens least similar to those kept so far.

    Args:
        patches: [B, P, C] patch tokens (prefix tokens excluded).
        seeds: [n0] and rest: [P - n0] patch positions, from :func:`initial_tokens`.
        substeps: tokens added by each greedy sub-step, all > 0 (``TokenCounts.replayed_substeps``).
        distance: ``"cosine"``, ``"euclidean"`` or ``"manhattan"`` (similarity = minus the distance), all
            between L2-normalised tokens.
    Returns:
        kept: [B, M] patch positions, M = n0 + sum(substeps), in output order (seeds, then each
        sub-step's tokens in the order they were added); slot: [B, P] the output slot (0..M-1) of every
        patch: its own if kept, else that of the kept token it is most similar to.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    batch, num_patches, _ = patches.shape
    with torch.autocast(patches.device.type, enabled=False):
        features = patches if patches.dtype in (torch.float32, torch.float64) else patches.float()
        features = F.normalize(features, dim=-1)  # every distance compares directions (spec section 6, step 1)
        kept = seeds.expand(batch, -1)
        unselected = rest.expand(batch, -1)
        # best[b, p]: similarity of patch p to its most similar kept token; owner: that token's slot
        best, owner = _similarity(features, kept, distance).max(dim=-1)
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
            new_best, new_owner = _similarity(features, added, distance).max(dim=-1)
            new_best_u = new_best.gather(1, unselected)
            closer = new_best_u > best_u
            best_u = torch.where(closer, new_best_u, best_u)
            owner_u = torch.where(closer, new_owner.gather(1, unselected) + offset, owner_u)
    own_slot = torch.arange(kept.shape[1], device=kept.device).expand(batch, -1)
    slot = torch.empty(batch, num_patches, dtype=torch.long, device=kept.device)
    slot.scatter_(1, kept, own_slot).scatter_(1, unselected, owner_u)
    return kept, slot


def random_tokens(batch: int, num_patches: int, count: int, device: torch.device | None = None) -> torch.Tensor:
    """A uniformly random subset of ``count`` patch positions per image, in random order: [B, count].

    Drawn from torch's global generator, so a run's seed (and a checkpoint's RNG state) reproduces it.
    """
    return torch.rand(batch, num_patches, device=device).argsort(dim=1)[:, :count]


def kept_slots(kept: torch.Tensor, num_patches: int) -> torch.Tensor:
    """The slot of every patch when the tokens left out are discarded: [B, P], the patch's position in
    ``kept`` [B, M] if kept, else -1 (the ``slot`` of :func:`select_tokens` for a reduction without merging)."""
    own_slot = torch.arange(kept.shape[1], device=kept.device).expand_as(kept)
    slot = torch.full((kept.shape[0], num_patches), -1, dtype=torch.long, device=kept.device)
    return slot.scatter_(1, kept, own_slot)


def merge_tokens(
    x: torch.Tensor, kept: torch.Tensor, slot: torch.Tensor, num_prefix_tokens: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average every patch into its output slot (ToE's merge): one row-wise ``index_add`` and a division.

    Args:
        x: [B, prefix + P, C] all tokens; kept: [B, M] kept patch positions; slot: [B, P] the output slot
            (0..M-1) of every patch (see :func:`select_tokens`).
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


def gather_tokens(x: torch.Tensor, kept: torch.Tensor, num_prefix_tokens: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the prefix tokens and the patches at ``kept`` [B, M]; the others are discarded.

    Args:
        x: [B, prefix + P, C] all tokens. Returns tokens [B, prefix + M, C] and index [B, prefix + M].
    """
    prefix = torch.arange(num_prefix_tokens, device=x.device).expand(x.shape[0], -1)
    index = torch.cat((prefix, kept + num_prefix_tokens), dim=1)
    return _gather_rows(x, index), index


def _gather_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x[b, positions[b]] for every b: [B, L, C], [B, n] -> [B, n, C], via a flat row gather."""
    batch, length, channels = x.shape
    flat = (positions + torch.arange(batch, device=x.device).unsqueeze(1) * length).reshape(-1)
    return x.reshape(batch * length, channels).index_select(0, flat).view(batch, -1, channels)


def _similarity(features: torch.Tensor, positions: torch.Tensor, distance: str) -> torch.Tensor:
    """Similarity [B, P, n] of every patch to the patches at ``positions`` [B, n] (higher = closer)."""
    chosen = _gather_rows(features, positions)
    if distance == "cosine":
        return features @ chosen.transpose(1, 2)
    p = 2.0 if distance == "euclidean" else 1.0
    return -torch.cdist(features, chosen, p=p, compute_mode="donot_use_mm_for_euclid_dist")
