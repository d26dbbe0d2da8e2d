"""The engine flags every recipe shares (precision, compile, resume, checkpoint interval, ...) and the
small readers of shared flags: mixed precision, Mixup/CutMix, the epoch LR schedule, --model-kwargs checks.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from timm.data import Mixup
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

from ..engine import (
    LRSchedule,
    Precision,
)
from ..engine.precision import AMP_DTYPES
from ..errors import UserError
from ..flag_types import count
from ..models.factory import parse_model_kwargs
from ..options import may_change_on_resume


def add_engine_arguments(parser: argparse.ArgumentParser, upstream_switches: bool = True) -> None:
    """Flags of the shared engine that the upstream recipes lack (precision, compile, resume, ...).

    ``upstream_switches=False`` leaves out ``--no-amp``, ``--apex-amp`` and ``--auto-resume`` for a recipe
    that has its own switches for them (EfficientTrain's ``--use_amp`` and ``--auto_resume``).
    """
    group = parser.add_argument_group("engine")
    may_change_on_resume(
        group.add_argument(
            "--amp-dtype",
            choices=AMP_DTYPES,
            default="auto",
            help="autocast dtype when mixed precision is on: auto = fp16 with a gradient scaler on CUDA (as upstream), "
            "fp32 on the CPU; bf16 only when asked for",
        )
    )
    if upstream_switches:
        may_change_on_resume(group.add_argument("--no-amp", action="store_true", help="train in full fp32"))
        may_change_on_resume(
            group.add_argument(
                "--apex-amp",
                action="store_true",
                help="apex O1's precision: fp16 autocast with a gradient scaler on CUDA (native AMP, apex is not used)",
            )
        )
        may_change_on_resume(
            group.add_argument(
                "--auto-resume",
                action="store_true",
                help="resume from <output>/checkpoint.pth when it exists (checkpoint-prev.pth if it is damaged)",
            )
        )
        may_change_on_resume(
            group.add_argument(
                "--change-on-resume",
                nargs="+",
                default=[],
                metavar="FLAG",
                help="flags (e.g. epochs) that may differ from the resumed checkpoint's, on purpose: the LR schedule "
                "follows the new values and log.txt records the change (other differences are refused)",
            )
        )
    may_change_on_resume(group.add_argument("--compile", action="store_true", help="torch.compile the model"))
    may_change_on_resume(
        group.add_argument(
            "--save-every-steps",
            type=count,
            default=0,
            metavar="N",
            help="also write checkpoint.pth every N optimizer updates within an epoch (0: off)",
        )
    )
    may_change_on_resume(
        group.add_argument(
            "--skip-corrupt",
            action="store_true",
            help="replace unreadable images by the next readable one and count them, instead of stopping",
        )
    )
    may_change_on_resume(
        group.add_argument(
            "--synchronize-step",
            action="store_true",
            help="wait for the GPU at the end of every training step (exact per-step compute times, slower)",
        )
    )
    may_change_on_resume(group.add_argument("--no-progress", action="store_true", help="no progress bars"))
    group.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword arguments for timm.create_model, e.g. embed_dim=96 depth=6",
    )


def precision_from_args(args: argparse.Namespace, device: torch.device, amp: bool) -> Precision:
    """The run's precision: ``--amp-dtype`` when ``amp`` is on (fp16 with a scaler on CUDA by default, fp32 on
    the CPU), full fp32 otherwise. ``--apex-amp`` means fp16 (apex O1), so it refuses another ``--amp-dtype``."""
    if getattr(args, "apex_amp", False) and args.amp_dtype not in ("auto", "fp16"):
        raise UserError(
            f"--apex-amp means fp16 autocast (apex O1's precision); for --amp-dtype {args.amp_dtype} leave out "
            "--apex-amp"
        )
    return Precision.from_flag(device, args.amp_dtype, enabled=amp)


def mixup_active(args: argparse.Namespace) -> bool:
    """Whether the mixup/cutmix flags (the same in every recipe) ask for mixing."""
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


def check_even_batch(args: argparse.Namespace, batch_size: int | None = None, flag: str = "--batch-size") -> None:
    """Mixup and CutMix pair each image with the flipped batch's: an odd batch (``--batch-size``, or the
    ``batch_size`` that ``flag`` sets) is refused when they are on."""
    batch = args.batch_size if batch_size is None else batch_size
    if mixup_active(args) and batch % 2:
        raise UserError(f"{flag} {batch} must be even with --mixup/--cutmix (or set both to 0)")


def check_start_epoch(args: argparse.Namespace, end: int, why: str) -> None:
    """A fresh run (no ``--resume``, no ``--eval``) must have an epoch to train before ``end``; ``why`` says
    what sets the end (e.g. "--epochs is 300")."""
    if not args.resume and not args.eval and args.start_epoch >= end:
        raise UserError(f"--start_epoch {args.start_epoch} leaves nothing to train: {why}")


def add_eval_argument(group: argparse._ActionsContainer) -> None:
    """``--eval`` of the classification recipes with ``--finetune`` and ``--sparse-eval`` (DeiT, LV-ViT)."""
    may_change_on_resume(
        group.add_argument(
            "--eval",
            action="store_true",
            help="evaluate the --resume (or --auto-resume) checkpoint or the --finetune weights and stop; with "
            "--sparse-eval at the ToE stage of the checkpoint's epoch",
        )
    )


def mixup_from_args(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    """timm's Mixup from the mixup/cutmix flags (label smoothing included), or None when they ask for none."""
    if not mixup_active(args):
        return None
    return Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
        label_smoothing=args.smoothing,
        num_classes=num_classes,
    )


def check_model_kwargs(pairs: list[str], set_by: dict[str, tuple[str, object]]) -> None:
    """Refuse ``--model-kwargs`` that contradict a recipe flag: ``set_by`` maps a keyword the recipe passes
    to ``timm.create_model`` to (the flag, the value it passes; None: the flag was not given)."""
    for key, value in parse_model_kwargs(pairs).items():
        flag, flag_value = set_by.get(key, (None, None))
        if flag is not None and flag_value is not None and value != flag_value:
            raise UserError(
                f"--model-kwargs {key}={value} contradicts {flag} {flag_value}: leave {key} out, {flag} sets it"
            )


def epoch_schedule(args: argparse.Namespace, epoch_offset: int) -> Callable[[torch.optim.Optimizer, int], LRSchedule]:
    """timm's per-epoch schedule from the schedule flags (``--sched``, ``--warmup-epochs``, ...), stepped with
    the finished epoch + ``epoch_offset``; its length (with cool-down) becomes the run's epochs."""

    def build(optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> LRSchedule:
        scheduler, epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args))
        return LRSchedule(scheduler, epoch_offset=epoch_offset, epochs=epochs)

    return build
