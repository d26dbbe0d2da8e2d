"""Train and eval data loaders: seeded per sample, distributed-aware, DeiT's repeated augmentation."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any, cast

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from ..engine.distributed import DistInfo
from ..engine.preemption import ignore_stop_signals
from ..errors import UserError
from .guard import GuardedDataset
from .sampling import EpochRandomSampler, KeyedSampler, SeededDataset


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    dist: DistInfo,
    seed: int,
    num_workers: int = 4,
    pin_memory: bool = True,
    repeated_aug: bool = False,
    skip_corrupt: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """Shuffled batches (last partial batch dropped); the sampler is a :class:`KeyedSampler`.

    Unreadable images stop the run naming the file, or with ``skip_corrupt`` are replaced by the
    next readable image and counted (see :func:`skipped_images`). ``collate_fn``: how samples form a
    batch (default: torch's stacking; e.g. padding with masks for images of different sizes).
    """
    base: RepeatAugSampler | DistributedSampler | EpochRandomSampler
    if dist.enabled and repeated_aug:
        base = RepeatAugSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True)
    elif dist.enabled:
        base = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    else:
        base = EpochRandomSampler(len(cast(Sized, dataset)), seed)  # a map-style dataset
    if len(base) < batch_size:
        raise UserError(
            f"--batch-size {batch_size} is larger than the {len(base)} training images each process sees per epoch"
        )
    return DataLoader(
        SeededDataset(GuardedDataset(dataset, skip_corrupt), seed),
        sampler=KeyedSampler(base, dist.rank, dist.world_size),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory and dist.device.type == "cuda",
        drop_last=True,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals,  # the main process decides when to stop (pre-emption)
        generator=torch.Generator().manual_seed(seed),  # keeps the loader off the global RNG stream
    )


def build_eval_loader(
    dataset: Dataset,
    batch_size: int,
    dist: DistInfo,
    dist_eval: bool = False,
    num_workers: int = 4,
    pin_memory: bool = True,
    skip_corrupt: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """Batches in order; with ``dist_eval`` each process evaluates a shard (padded to equal size)."""
    sampler: DistributedSampler | SequentialSampler
    if dist.enabled and dist_eval:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=False)
    else:
        sampler = SequentialSampler(cast(Sized, dataset))
    return DataLoader(
        GuardedDataset(dataset, skip_corrupt),
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory and dist.device.type == "cuda",
        drop_last=False,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals,  # the main process decides when to stop (pre-emption)
    )


def skipped_images(loader: DataLoader) -> int:
    """How many unreadable images the loader's dataset replaced so far (``--skip-corrupt``)."""
    dataset: Any = loader.dataset  # a wrapper of a wrapper ... of the GuardedDataset
    while not isinstance(dataset, GuardedDataset):
        dataset = dataset.dataset
    return dataset.skipped
