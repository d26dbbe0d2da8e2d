"""One training epoch and one evaluation pass, shared by every recipe."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from timm.utils import accuracy
from torch import nn
from torch.utils.data import DataLoader

from ..options import UserError
from .distributed import DistInfo, all_reduce_sum
from .failpoints import failpoint
from .logger import progress
from .precision import Precision


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class EpochStats:
    """What one training epoch did so far (this process's view); a mid-epoch checkpoint stores it."""

    steps: int = 0  # batches done in this epoch
    loss_sum: float = 0.0
    images: int = 0
    compute_time: float = 0.0  # seconds in forward/backward/step, data loading excluded
    data_time: float = 0.0  # seconds waiting for the loader
    wall_time: float = 0.0
    updates: int = 0  # optimizer updates since the start of training
    lr: float = 0.0
    tokens: int | None = None  # sequence length fed to blocks 1.. in the last step

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


@dataclass
class StepHooks:
    """Recipe-specific steps around the model call.

    prepare: (images, targets) -> (images, targets) on the device, before mixup (e.g. Fourier crop,
        token-label targets; targets may be tuples/dicts of tensors); mixup: timm Mixup-like callable;
        after_update: called with the number of optimizer updates done so far (per-iteration LR).
    """

    prepare: Callable | None = None
    mixup: Callable | None = None
    after_update: Callable[[int], None] | None = None


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    dist: DistInfo,
    epoch: int,
    *,
    num_updates: int = 0,
    accum_steps: int = 1,
    clip_grad: float | None = None,
    clip_mode: str = "norm",
    model_ema=None,
    hooks: StepHooks | None = None,
    tokens_of: Callable[[], int | None] | None = None,
    show_progress: bool = True,
    resume_from: EpochStats | None = None,
    on_update: Callable[[EpochStats], None] | None = None,
) -> EpochStats:
    """Train for one pass over ``loader``; raises :class:`TrainingDiverged` on a non-finite loss.

    ``resume_from``: the stats of the part of this epoch done before a mid-epoch checkpoint (the
    loader then yields only the rest). ``on_update``: called with the running stats after every
    optimizer update (mid-epoch checkpoints).
    """
    hooks = hooks or StepHooks()
    device = dist.device
    model.train()
    optimizer.zero_grad(set_to_none=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    stats = dataclasses.replace(resume_from) if resume_from is not None else EpochStats()
    stats.updates = num_updates
    first_step = stats.steps
    total_steps = first_step + len(loader)
    if total_steps == 0:
        raise UserError("the training loader produced no batch (fewer images than --batch-size?)")
    start = last = time.perf_counter()
    wall_before = stats.wall_time
    batches = progress(loader, len(loader), f"epoch {epoch}", dist.is_main and show_progress)
    for step, (samples, targets) in enumerate(batches, start=first_step):
        ready = time.perf_counter()
        stats.data_time += ready - last
        samples, targets = to_device(samples, device), to_device(targets, device)
        if hooks.prepare is not None:
            samples, targets = hooks.prepare(samples, targets)
        if hooks.mixup is not None:
            samples, targets = hooks.mixup(samples, targets)
        update = (step + 1) % accum_steps == 0 or step + 1 == total_steps
        sync = contextlib.nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast():
                outputs = model(samples)
                loss = criterion(samples, outputs, targets)
            precision.backward(loss / accum_steps)
        if update:
            precision.step(optimizer, parameters, clip_grad, clip_mode)
            optimizer.zero_grad(set_to_none=True)
        # the step's one host sync, after the whole step is queued; a bad step stops here, before the EMA
        # update and before anything is saved
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(
                f"the loss became {loss_value} at epoch {epoch}, step {step}; training stopped "
                "(the last checkpoint is kept; try a lower --lr, --clip-grad or fp32)"
            )
        if update:
            stats.updates += 1
            if model_ema is not None:  # decay applies from the first update, as timm's ModelEma in upstream
                model_ema.update(unwrap(model))
            if hooks.after_update is not None:
                hooks.after_update(stats.updates)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        last = time.perf_counter()
        stats.compute_time += last - ready
        stats.loss_sum += loss_value
        stats.images += samples.shape[0]
        stats.steps = step + 1
        stats.wall_time = wall_before + last - start
        stats.lr = optimizer.param_groups[0]["lr"]
        if update:
            if on_update is not None and step + 1 < total_steps:
                on_update(stats)
            failpoint("train-step")
    stats.tokens = tokens_of() if tokens_of is not None else None
    return stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    precision: Precision,
    dist: DistInfo,
    *,
    reduce: bool = False,
    prepare: Callable | None = None,
    show_progress: bool = True,
    description: str = "eval",
) -> dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) over ``loader``; ``reduce`` sums over processes."""
    model.eval()
    device = dist.device
    loss_sum = correct1 = correct5 = count = 0.0
    for images, targets in progress(loader, len(loader), description, dist.is_main and show_progress):
        images, targets = to_device(images, device), to_device(targets, device)
        if prepare is not None:
            images, targets = prepare(images, targets)
        with precision.autocast():
            outputs = model(images)
        outputs = outputs.float()
        acc1, acc5 = accuracy(outputs, targets, topk=(1, min(5, outputs.shape[1])))
        n = images.shape[0]
        loss_sum += nn.functional.cross_entropy(outputs, targets, reduction="sum").item()
        correct1 += acc1.item() * n / 100
        correct5 += acc5.item() * n / 100
        count += n
    if reduce:
        loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], dist, device)
    return {"loss": loss_sum / count, "acc1": 100 * correct1 / count, "acc5": 100 * correct5 / count}


def to_device(batch, device: torch.device):
    """Move a tensor, or tuples/lists/dicts of tensors (e.g. token-label targets), to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    while True:
        inner = model._orig_mod if hasattr(model, "_orig_mod") else getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
