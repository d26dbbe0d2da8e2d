"""Reproducible data loading: every sample's augmentation randomness depends only on (seed, epoch, position).

A :class:`KeyedSampler` wraps any epoch-aware sampler (random, DistributedSampler, timm's
RepeatAugSampler) and yields ``(key, index)`` pairs, where ``key`` encodes the epoch and the sample's
position in the *global* order of that epoch (position j of rank r is j * world_size + r, the
interleaving of DistributedSampler). :class:`SeededDataset` seeds torch, ``random`` and numpy from
(seed, key) before running the transform. Hence augmentations do not depend on the number of loader
workers, on persistent workers, on resuming, or on the number of processes sharing a global batch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from ..engine.rng import seed_all

_EPOCH_STRIDE = 1 << 40  # positions per epoch in a key


class EpochRandomSampler(Sampler[int]):
    """Single-process shuffling whose order depends only on (seed, epoch)."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


class KeyedSampler(Sampler[tuple[int, int]]):
    """Yield (key, index) for the samples of ``sampler``; ``skip`` leaves out the first positions."""

    def __init__(self, sampler: Sampler[int], rank: int = 0, world_size: int = 1) -> None:
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start ``epoch``, leaving out its first ``skip`` samples of this rank (a resumed epoch)."""
        self.epoch, self.skip = epoch, skip
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = self.epoch * _EPOCH_STRIDE
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield base + position * self.world_size + self.rank, index

    def __len__(self) -> int:
        return len(cast(Sized, self.sampler)) - self.skip  # the samplers of build_train_loader have a length


class SeededDataset(Dataset):
    """Wrap a dataset so that item ``(key, index)`` is ``dataset[index]`` with RNGs seeded by (seed, key)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # a map-style dataset

    def __getitem__(self, item: tuple[int, int]):
        key, index = item
        sample_seed = (self.seed * 1_000_003 + key) % (1 << 63)
        if get_worker_info() is not None:
            seed_all(sample_seed)
            return self.dataset[index]
        # in the main process, keep the training loop's random streams untouched
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            seed_all(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)
