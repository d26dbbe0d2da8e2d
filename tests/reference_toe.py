"""A slow, loop-based Token Expansion written straight from the spec, to check TokenSelect against.

Deliberately naive: Python lists for the selected and unselected sets, similarities recomputed from
scratch for every sub-step, one Python iteration per token when merging. Used by the tests and by
benchmarks/bench_token_select.py as the side-by-side baseline.
"""

from __future__ import annotations

import math

import torch


def reference_counts(num_patches, keep_rate, r0, k, stage):
    """(seeds, sub-step sizes replayed in ``stage``), spec section 4, without the library's code."""
    seeds = math.floor(num_patches * r0)
    increments = [keep_rate[0] - r0] + [keep_rate[i] - keep_rate[i - 1] for i in range(1, len(keep_rate))]
    sizes = []
    for s in range(stage):
        if s == len(keep_rate) - 1:
            added = math.floor(num_patches * keep_rate[s]) - math.floor(num_patches * (r0 + sum(increments[:s])))
        else:
            added = math.floor(num_patches * increments[s])
        sizes += [added // k] * (k - 1) + [added - (added // k) * (k - 1)]
    return seeds, sizes


def reference_seeds(num_patches, r0, seeding="reference"):
    count = math.floor(num_patches * r0)
    if seeding == "uniform":
        return [math.floor((i + 0.5) * num_patches / count) for i in range(count)]
    step = int(1 // r0)
    return [i for i in range(num_patches) if i % step == 0][:count]


def _similarities(u, selected, distance):
    """Similarity of token u [C] to each row of ``selected`` [S, C], as a Python list (higher = closer); the
    tokens are L2-normalised first for every distance (spec section 6, step 1)."""
    unit = u / u.norm().clamp_min(1e-12)
    rows = selected / selected.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if distance == "cosine":
        return (rows @ unit).tolist()
    p = 2 if distance == "euclidean" else 1
    return (-(rows - unit).abs().pow(p).sum(dim=1).pow(1 / p)).tolist()


def reference_token_select(x, keep_rate, r0, k, stage, distance="cosine", num_prefix_tokens=1, seeding="reference"):
    """Reduce x [B, N, C] for ``stage`` (>= 1, active); returns (tokens, index) like TokenSelect."""
    batch, length, _ = x.shape
    num_patches = length - num_prefix_tokens
    _, sizes = reference_counts(num_patches, keep_rate, r0, k, stage)
    all_tokens, all_index = [], []
    for b in range(batch):
        feats = x[b, num_prefix_tokens:].detach()
        selected = reference_seeds(num_patches, r0, seeding)
        unselected = [i for i in range(num_patches) if i not in selected]
        for m in sizes:
            if m == 0 or not unselected:
                continue
            score = {u: max(_similarities(feats[u], feats[selected], distance)) for u in unselected}
            unselected = sorted(unselected, key=lambda u: score[u])  # stable: ties keep the current order
            selected, unselected = selected + unselected[:m], unselected[m:]
        members = [[s] for s in selected]
        for u in unselected:
            sims = _similarities(feats[u], feats[selected], distance)
            members[sims.index(max(sims))].append(u)  # first index on ties
        merged = [x[b, [num_prefix_tokens + i for i in group]].mean(0) for group in members]
        prefix = [x[b, i] for i in range(num_prefix_tokens)]
        all_tokens.append(torch.stack(prefix + merged))
        all_index.append(list(range(num_prefix_tokens)) + [num_prefix_tokens + s for s in selected])
    return torch.stack(all_tokens), torch.tensor(all_index, dtype=torch.long)
