"""How a recipe turns its model, data and loss into a :class:`~toe.engine.TrainingRun` (:func:`build_run`):
the EMA, optimizer, loaders, precision, wrapping and schedule are built here from the flags all recipes share
(``--batch-size``, ``--seed``, ``--model-ema*``, timm's optimizer flags, ``--clip-grad``, the engine flags);
plus attaching ToE, fine-tuning weights and training with the log.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from ..data import build_eval_loader, build_train_loader
from ..data.image_files import dataset_identity
from ..data.loader import skipped_images
from ..engine import (
    DistInfo,
    Evaluation,
    LRSchedule,
    RunLogger,
    RunParts,
    RunSettings,
    StepHooks,
    TrainingRun,
    TrainState,
    fit,
    load_weights,
)
from ..engine.distributed import check_same_everywhere
from ..engine.loop import batches_to_train
from ..errors import UserError
from ..integration import PatchEmbedding, apply_toe
from ..options import flag_names
from ..token_select import TokenSelect
from .flags import precision_from_args
from .run_folder import plain_args
from .summary import describe_toe


def attach_toe(model: nn.Module, token_select: TokenSelect | None, model_name: str) -> nn.Module:
    """``apply_toe(model, token_select)`` when ToE is on; a model ToE cannot work with is a :class:`UserError`."""
    if token_select is not None:
        try:
            apply_toe(model, token_select)
        except (TypeError, ValueError) as error:
            raise UserError(f"--model {model_name} cannot train with ToE: {flag_names(str(error))}") from None
    return model


def build_run(
    args: argparse.Namespace,
    model: nn.Module,
    datasets: tuple[Dataset, Dataset | None],
    loss: nn.Module,
    dist: DistInfo,
    *,
    output_dir: Path | None,
    lr_schedule: Callable[[torch.optim.Optimizer, int], LRSchedule],
    amp: bool,
    num_workers: int,
    eval_batch_size: int,
    dist_eval: bool,
    epochs: int | None = None,
    accum_steps: int = 1,
    drop_last_group: bool = False,
    train_mode: bool = True,
    repeated_aug: bool = False,
    hooks: StepHooks | None = None,
    eval_prepare: Callable | None = None,
    evaluation: Evaluation | None = None,
    collate_fn: Callable | None = None,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    extra_log: dict | None = None,
) -> TrainingRun:
    """The run of a recipe: its ``model`` (built, ToE attached, on the CPU), ``datasets`` (train, val or
    None), ``loss`` (``loss(inputs, outputs, targets)``) and what differs between recipes, with the rest
    built from the shared flags.

    Args:
        lr_schedule: ``(optimizer, updates per epoch) -> LRSchedule``, e.g. :func:`epoch_schedule`.
        amp: mixed precision on (``--amp-dtype`` picks the dtype).
        num_workers, eval_batch_size, dist_eval: loaders and evaluation (flag names differ per recipe).
        epochs: train epochs [start, epochs); None: the LR schedule's length.
        accum_steps, drop_last_group: batches per optimizer update, and whether a short last group of an
            epoch is left out (EfficientTrain) or makes a smaller update (timm).
        train_mode: False trains the model in eval mode, ToE still on (DeiT's --no-train-mode).
        repeated_aug: DeiT's repeated augmentation when distributed.
        hooks: batch preparation before the model call (device-side transforms, mixup, target building).
        eval_prepare: the same before evaluation. evaluation: the metrics (default: top-1/top-5).
        collate_fn: how samples form a batch (default: stacking), for both loaders.
        optimizer: ``model -> optimizer`` (default: timm's ``create_optimizer_v2`` from ``--opt``, ``--lr``,
            ``--weight-decay``, ...).
        extra_log: constant entries of every log record (``n_parameters`` is added).

    Flags read from ``args``: ``batch_size``, ``seed``, ``pin_mem``, the engine flags of
    :func:`add_engine_arguments`, and when present ``model_ema`` (with ``model_ema_decay`` and
    ``model_ema_force_cpu``), ``clip_grad``, ``clip_mode``, ``start_epoch`` (absent: no EMA, no clipping,
    epoch 0).
    """
    device = dist.device
    model.to(device)
    model_ema = None
    if getattr(args, "model_ema", False):
        model_ema = ModelEmaV3(
            model, decay=args.model_ema_decay, device=torch.device("cpu") if args.model_ema_force_cpu else None
        )
    built_optimizer = optimizer(model) if optimizer is not None else _timm_optimizer(model, args)
    train_set, val_set = datasets
    train_loader = build_train_loader(
        train_set,
        args.batch_size,
        dist,
        args.seed,
        num_workers,
        args.pin_mem,
        repeated_aug,
        args.skip_corrupt,
        collate_fn=collate_fn,
    )
    val_loader = None
    if val_set is not None:
        val_loader = build_eval_loader(
            val_set, eval_batch_size, dist, dist_eval, num_workers, args.pin_mem, args.skip_corrupt, collate_fn
        )
    updates_per_epoch = math.ceil(batches_to_train(len(train_loader), accum_steps, drop_last_group) / accum_steps)
    schedule = lr_schedule(built_optimizer, updates_per_epoch)
    run_epochs = epochs if epochs is not None else schedule.epochs
    if run_epochs is None:
        raise ValueError("build_run needs epochs= or an LR schedule that knows its length")
    settings = RunSettings(
        epochs=run_epochs,
        seed=args.seed,
        output_dir=output_dir,
        args=plain_args(args),
        accum_steps=accum_steps,
        drop_last_group=drop_last_group,
        train_mode=train_mode,
        clip_grad=getattr(args, "clip_grad", None),
        clip_mode=getattr(args, "clip_mode", "norm"),
        dist_eval=dist_eval,
        synchronize_step=args.synchronize_step,
        show_progress=not args.no_progress,
        save_every_steps=args.save_every_steps,
        extra_log={"n_parameters": n_parameters(model), **(extra_log or {})},
        identity={"world_size": dist.world_size, "data": dataset_identity(train_set)},
    )
    check_same_everywhere(settings.identity["data"], dist, "training images")
    parts = RunParts(
        model=wrap_model(model, dist, args.compile),
        module=model,
        criterion=loss,
        optimizer=built_optimizer,
        precision=precision_from_args(args, device, amp),
        train_loader=train_loader,
        val_loader=val_loader,
        dist=dist,
        lr_schedule=schedule,
        model_ema=model_ema,
        hooks=hooks or StepHooks(),
        eval_prepare=eval_prepare,
        skipped_images=(lambda: skipped_images(train_loader)) if args.skip_corrupt else None,
    )
    if evaluation is not None:
        parts.evaluation = evaluation
    return TrainingRun(settings, parts, TrainState(start_epoch=getattr(args, "start_epoch", 0)))


def _timm_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """timm's optimizer from the optimizer flags; a mistake in them is a :class:`UserError`."""
    try:
        return create_optimizer_v2(model, **optimizer_kwargs(args))
    except (AssertionError, ValueError) as error:
        raise UserError(f"--opt {args.opt}: {error}") from None


def wrap_model(model: nn.Module, dist: DistInfo, compile_model: bool) -> nn.Module:
    """DDP (when distributed) then torch.compile (when asked): the module that runs the forward."""
    if dist.enabled:
        device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        model = cast(nn.Module, torch.compile(model))  # an OptimizedModule; the stub says a callable
    return model


def load_finetune_weights(
    model: nn.Module,
    source: str,
    flag: str = "--finetune",
    frozen: Callable[[str], bool] | None = None,
    fresh_head: Callable[[dict], bool] | None = None,
) -> str:
    """Load pretrained weights for fine-tuning: heads of another class count are dropped and the
    position embedding is resampled to the model's grid, bicubic without antialiasing as the upstream recipes
    (``F.interpolate(mode="bicubic")``; the class and distillation positions kept). Returns a one-line report.
    ``frozen``: which parameter names will not train; a file that leaves one of them at its random
    initialisation is a :class:`UserError` (training on a random frozen backbone is never what was meant).
    ``fresh_head``: given the file's weights, whether to leave the heads at their initialisation even when
    they fit (a new task's classes)."""
    from timm.layers import resample_abs_pos_embed

    state = load_weights(source, flag)
    own = model.state_dict()
    drop_all = fresh_head is not None and fresh_head(state)
    dropped = [
        k
        for k in list(state)
        if k.startswith(("head", "head_dist", "aux_head")) and k in own and (drop_all or state[k].shape != own[k].shape)
    ]
    for key in dropped:
        del state[key]
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=list(cast(PatchEmbedding, model.patch_embed).grid_size),
            num_prefix_tokens=prefix,
            interpolation="bicubic",
            antialias=False,
        )
    unknown = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        raise UserError(f"{flag} {source}: weights of another shape for {', '.join(mismatched[:3])}")
    missing, _ = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    random_frozen = [k for k in missing if frozen is not None and frozen(k)]
    if random_frozen:
        raise UserError(
            f"{flag} {source} does not hold {len(random_frozen)} of the frozen backbone's tensors "
            f"({', '.join(random_frozen[:3])}{', ...' if len(random_frozen) > 3 else ''}): they would stay random; "
            "give weights of this --model"
        )
    return (
        f"fine-tuning from {source}: {len(state) - len(unknown)} tensors loaded, "
        f"{len(dropped)} head tensors dropped, {len(missing)} left at init, {len(unknown)} ignored"
    )


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_and_log(run: TrainingRun, log: RunLogger, header: str, toe_epochs: int | None = None) -> dict | None:
    """Print ``header`` and the ToE schedule (over ``toe_epochs``, default the run's), train, print the
    training time; returns the last epoch's log record."""
    log.print(header)
    log.print(describe_toe(run.parts.module, toe_epochs or run.settings.epochs))
    started = time.perf_counter()
    record = fit(run, log)
    log.print(f"training time {time.perf_counter() - started:.0f}s")
    log.close()
    return record
