"""What a training run is: a :class:`TrainingRun` keeps apart what never changes (:class:`RunSettings`), the
collaborators the recipe built (:class:`RunParts`: model, optimizer, loaders, loss, EMA, LR schedule,
evaluation) and what training changes (:class:`TrainState`, restored from checkpoints)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .distributed import DistInfo
from .evaluation import Classification, Evaluation
from .loop import ModelEma, StepHooks
from .lr import LRSchedule
from .precision import Precision


@dataclass(frozen=True)
class RunSettings:
    """What stays fixed for the whole run (from the flags)."""

    epochs: int  # train epochs [start, epochs)
    seed: int = 0
    output_dir: Path | None = None  # nothing is written when None
    args: dict = field(default_factory=dict)  # plain flag values, saved in every checkpoint
    accum_steps: int = 1  # batches per optimizer update
    drop_last_group: bool = False  # leave out a short last accumulation group (EfficientTrain), see loop.py
    train_mode: bool = True  # False: the model trains in eval mode, ToE still on (DeiT's --no-train-mode)
    clip_grad: float | None = None
    clip_mode: str = "norm"
    dist_eval: bool = False  # each process evaluates a shard, the numbers are summed
    synchronize_step: bool = False  # wait for the device after every step (exact per-step compute time)
    show_progress: bool = True
    save_every_steps: int = 0  # mid-epoch checkpoint every N optimizer updates (0: only at epoch ends)
    extra_log: dict = field(default_factory=dict)  # constant entries of every log record
    identity: dict = field(default_factory=dict)  # what the run trains on (processes, images), checked on resume


@dataclass
class RunParts:
    """The collaborators a recipe builds (see ``toe.recipes.build.build_run``) and the engine uses."""

    model: nn.Module  # what runs the forward: possibly DDP- and/or torch.compile-wrapped
    module: nn.Module  # the plain model: state_dict, ToE stage
    criterion: nn.Module  # criterion(inputs, outputs, targets) -> loss
    optimizer: torch.optim.Optimizer
    precision: Precision
    train_loader: DataLoader
    val_loader: DataLoader | None
    dist: DistInfo
    lr_schedule: LRSchedule | None = None
    model_ema: ModelEma | None = None  # timm ModelEmaV3
    hooks: StepHooks = field(default_factory=StepHooks)
    eval_prepare: Callable | None = None  # (images, targets) -> (images, targets) before evaluation
    evaluation: Evaluation = field(default_factory=Classification)
    skipped_images: Callable[[], int] | None = None  # unreadable images skipped so far (--skip-corrupt)


@dataclass
class TrainState:
    """What training changes: saved in every checkpoint and restored from it."""

    start_epoch: int = 0  # the next epoch to train
    num_updates: int = 0  # optimizer updates since the start of training
    best: dict = field(default_factory=dict)  # best_test_<metric> values so far
    last_record: dict | None = None  # the last finished epoch's log record
    partial: dict | None = None  # the unfinished epoch of a mid-epoch checkpoint being resumed
    changes: dict | None = None  # flags changed on purpose when resuming, for the next log record


@dataclass
class TrainingRun:
    """Everything the epoch loop needs."""

    settings: RunSettings
    parts: RunParts
    state: TrainState = field(default_factory=TrainState)
