"""The steps of one training epoch: forward, loss, backward, gradient accumulation, optimizer step, EMA, LR.

:func:`train_steps` takes its collaborators one by one, so it also runs without a :class:`TrainingRun`
(``toe.engine.trainer.train_one_epoch`` passes those of a run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import UserError
from ..integration import train_toe
from .distributed import DistInfo
from .failpoints import failpoint
from .logger import progress
from .lr import LRSchedule
from .memory import SavedTensorMeter, cuda_peak, reset_peak
from .precision import Precision
from .transfer import to_device, unwrap


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
    tokens_fed: float = 0.0  # sum over steps of the sequence length fed to blocks 1.. (mean: / token_steps)
    tokens_full: float = 0.0  # sum over steps of the length without ToE
    token_steps: int = 0  # steps counted in the two sums (0: the model reports no token counts)
    memory: int | None = None  # bytes: the CUDA peak, or on the CPU the activations saved for backward in a step

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


@dataclass
class StepHooks:
    """Recipe-specific steps on the batch before the model call.

    prepare: (images, targets) -> (images, targets) on the device, before mixup (e.g. Fourier crop,
        token-label targets; targets may be tuples/dicts of tensors); mixup: timm Mixup-like callable.
    """

    prepare: Callable | None = None
    mixup: Callable | None = None


class ModelEma(Protocol):
    """What the engine uses of an EMA of the weights (timm's ModelEmaV3)."""

    module: nn.Module  # the averaged model

    def update(self, model: nn.Module) -> None: ...


def batches_to_train(batches: int, accum_steps: int, drop_last_group: bool) -> int:
    """How many of an epoch's ``batches`` are trained: all of them (a short last accumulation group makes
    a smaller update, as timm's train.py), or with ``drop_last_group`` only whole groups (EfficientTrain:
    the batches of a short last group are left out)."""
    return batches - batches % accum_steps if drop_last_group else batches


def accumulation_divisor(step: int, total_steps: int, accum_steps: int) -> int:
    """The number of batches in the accumulation group of batch ``step`` (of ``total_steps``): the loss is
    divided by it, so every update averages the gradients of its own batches (timm's train.py)."""
    last_group_start = total_steps - total_steps % accum_steps
    return accum_steps if step < last_group_start else total_steps - last_group_start


def train_steps(
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
    drop_last_group: bool = False,
    train_mode: bool = True,
    clip_grad: float | None = None,
    clip_mode: str = "norm",
    model_ema: ModelEma | None = None,
    hooks: StepHooks | None = None,
    lr_schedule: LRSchedule | None = None,
    tokens_of: Callable[[], tuple[float, float] | None] | None = None,
    synchronize_step: bool = False,
    show_progress: bool = True,
    resume_from: EpochStats | None = None,
    on_update: Callable[[EpochStats], None] | None = None,
) -> EpochStats:
    """Train for one pass over ``loader``; raises :class:`TrainingDiverged` on a non-finite loss.

    Every ``accum_steps`` batches make one optimizer update (see :func:`batches_to_train` for a short
    last group). ``resume_from``: the stats of the part of this epoch done before a mid-epoch checkpoint
    (the loader then yields only the rest). ``on_update``: called with the running stats after every
    optimizer update but the epoch's last (mid-epoch checkpoints). ``synchronize_step``: also wait for
    the device at the end of every step (exact per-step compute times; one more host sync per step).
    ``train_mode=False``: the model trains in eval mode (no dropout or drop path, BatchNorm statistics frozen;
    DeiT's ``--no-train-mode``), ToE still reduces the tokens. ``tokens_of``: (tokens fed to blocks 1.., tokens
    without ToE) of the last forward, summed in the stats (a mid-epoch checkpoint keeps the sums).
    """
    hooks = hooks or StepHooks()
    device = dist.device
    train_toe(model.train(train_mode))
    optimizer.zero_grad(set_to_none=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    stats = dataclasses.replace(resume_from) if resume_from is not None else EpochStats()
    stats.updates = num_updates
    first_step = stats.steps
    total_steps = batches_to_train(first_step + len(loader), accum_steps, drop_last_group)
    if total_steps == 0:
        raise UserError(
            "the training loader produced no batch to train (fewer images than the batch size, or fewer "
            "batches than the gradient accumulation steps?)"
        )
    start = last = time.perf_counter()
    wall_before = stats.wall_time
    # memory: the CUDA peak of the epoch, or the CPU activations of its first step (once: a resumed epoch keeps
    # its first step's; not under torch.compile, which does not trace saved-tensor hooks)
    compiled = isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
    measure_cpu = device.type == "cpu" and not compiled and stats.memory is None
    meter = SavedTensorMeter(unwrap(model)) if measure_cpu else None
    reset_peak(device)
    to_train = itertools.islice(loader, total_steps - first_step)  # a dropped last group is not even loaded
    batches = progress(to_train, total_steps - first_step, f"epoch {epoch}", dist.is_main and show_progress)
    for step, (samples, targets) in enumerate(batches, start=first_step):
        ready = time.perf_counter()
        stats.data_time += ready - last
        samples, targets = to_device(samples, device), to_device(targets, device)
        if hooks.prepare is not None:
            samples, targets = hooks.prepare(samples, targets)
        if hooks.mixup is not None:
            samples, targets = hooks.mixup(samples, targets)
        counted = None
        update = (step + 1) % accum_steps == 0 or step + 1 == total_steps
        no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel's
        sync = contextlib.nullcontext() if update or no_sync is None else no_sync()
        measured = meter.measure() if meter is not None and step == first_step else contextlib.nullcontext()
        with sync:
            with precision.autocast(), measured:
                outputs = model(samples)
                counted = tokens_of() if tokens_of is not None else None
                loss = criterion(samples, outputs, targets)
            precision.backward(loss / accumulation_divisor(step, total_steps, accum_steps))
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
            if lr_schedule is not None:
                lr_schedule.on_update(stats.updates)
        if synchronize_step and device.type == "cuda":
            torch.cuda.synchronize(device)
        last = time.perf_counter()
        stats.compute_time += last - ready
        stats.loss_sum += loss_value
        stats.images += samples.shape[0]
        if counted is not None:
            stats.tokens_fed, stats.tokens_full, stats.token_steps = (
                stats.tokens_fed + counted[0],
                stats.tokens_full + counted[1],
                stats.token_steps + 1,
            )
        stats.steps = step + 1
        stats.wall_time = wall_before + last - start
        stats.lr = optimizer.param_groups[0]["lr"]
        if update:
            if on_update is not None and step + 1 < total_steps:
                on_update(stats)
            failpoint("train-step")
    if meter is not None:
        stats.memory = meter.bytes
    elif device.type == "cuda":
        stats.memory = max(stats.memory or 0, cuda_peak(device))
    return stats
