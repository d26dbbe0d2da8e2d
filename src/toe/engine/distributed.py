"""Distributed set-up for torchrun (DDP over NCCL on GPU, gloo on CPU) and small collective helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, local rank, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str, dist_url: str = "env://") -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (RANK/WORLD_SIZE set), else one process.

    Args:
        device: ``cpu``, ``cuda`` or ``cuda:N``; with torchrun, ``cuda`` means ``cuda:LOCAL_RANK``.
        dist_url: the rendezvous (``env://`` under torchrun).
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but this machine has no CUDA device; use --device cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=torch.device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        torch_device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        torch_device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        if dist_url == "env://":
            dist.init_process_group(
                backend=backend, store=_attempt_store(rank, world_size), world_size=world_size, rank=rank
            )
        else:
            dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank)
    return DistInfo(rank, world_size, local_rank, torch_device)


def _attempt_store(rank: int, world_size: int) -> dist.Store:
    """torchrun's store, with keys private to this restart attempt.

    After torchrun restarts failed workers (--max-restarts), the store still holds the previous
    attempt's keys; with torch 2.14 a restarted gloo worker could read a dead peer's address from it
    and fail to connect (or hang). Prefixing by TORCHELASTIC_RESTART_COUNT keeps attempts apart.
    """
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", rank, world_size))
    return dist.PrefixStore(f"toe/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few floats over all processes."""
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def replicas_in_sync(module: torch.nn.Module, info: DistInfo) -> bool | None:
    """Whether every process holds exactly the same weights (per-tensor sums compared); None if alone."""
    if not info.enabled:
        return None
    with torch.no_grad():
        local = torch.stack(
            [p.detach().double().sum() for p in module.parameters()]
            + [p.detach().double().abs().sum() for p in module.parameters()]
        )
    gathered = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(gathered, local)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def gather_objects(obj: object, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` when alone)."""
    if not info.enabled:
        return [obj]
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def check_same_everywhere(value: dict, info: DistInfo, what: str) -> None:
    """Every process must hold the same ``value`` (e.g. the identity of its training images, which each node
    reads from its own disk): a :class:`UserError` naming the first process that differs, on every process."""
    if not info.enabled:
        return
    values = gather_objects(value, info)
    for rank, other in enumerate(values):
        if other != values[0]:
            keys = [key for key in sorted(set(other) | set(values[0])) if other.get(key) != values[0].get(key)]
            shown = ", ".join(f"{key} {other.get(key)} (process 0: {values[0].get(key)})" for key in keys)
            raise UserError(
                f"process {rank} sees other {what} than process 0: {shown}; every process (every node) must "
                "read the same data"
            )
