"""Every random stream of the training process: seeded per epoch (and per sample, by the data
loaders), captured and restored (mid-epoch checkpoints).

The captured states are converted to tensors, ints and lists so that checkpoints still load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import cast

import numpy as np
import torch


def capture_rng() -> dict:
    """The states of torch (CPU and CUDA), numpy and Python's ``random``."""
    # the legacy tuple (numpy's type information also allows the dict of get_state(legacy=False))
    name, keys, position, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": [version, list(internal), gauss_next],
    }


def restore_rng(state: dict) -> None:
    """Put back what :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def seed_all(seed: int) -> None:
    """Seed torch, numpy and Python's ``random`` of this process."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed the main process's RNGs (drop-path, mixup, ...) for ``epoch``: a resumed run repeats them."""
    seed_all((seed * 1_000_003 + epoch) * 64 + rank)
