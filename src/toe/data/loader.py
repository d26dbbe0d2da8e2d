"""Train and eval data loaders: seeded per sample, distributed-aware, DeiT's repeated augmentation."""

from __future__ import annotations

from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler

from ..engine.distributed import DistInfo
from ..options import UserError
from .sampling import EpochRandomSampler, KeyedSampler, SeededDataset


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    dist: DistInfo,
    seed: int,
    num_workers: int = 4,
    pin_memory: bool = True,
    repeated_aug: bool = False,
) -> DataLoader:
    """Shuffled batches (last partial batch dropped); the sampler is a :class:`KeyedSampler`."""
    if dist.enabled and repeated_aug:
        base = RepeatAugSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True)
    elif dist.enabled:
        base = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    else:
        base = EpochRandomSampler(len(dataset), seed)
    if len(base) < batch_size:
        raise UserError(
            f"--batch-size {batch_size} is larger than the {len(base)} training images each process sees per epoch"
        )
    return DataLoader(
        SeededDataset(dataset, seed),
        sampler=KeyedSampler(base, dist.rank, dist.world_size),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory and dist.device.type == "cuda",
        drop_last=True,
        persistent_workers=num_workers > 0,
    )


def build_eval_loader(
    dataset: Dataset,
    batch_size: int,
    dist: DistInfo,
    dist_eval: bool = False,
    num_workers: int = 4,
    pin_memory: bool = True,
) -> DataLoader:
    """Batches in order; with ``dist_eval`` each process evaluates a shard (padded to equal size)."""
    if dist.enabled and dist_eval:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=False)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory and dist.device.type == "cuda",
        drop_last=False,
        persistent_workers=num_workers > 0,
    )
