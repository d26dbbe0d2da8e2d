"""The LV-ViT recipe (TokenLabeling's timm train.py flags: token labeling, MixToken) with Token Expansion.

    python ToE/lvvit/main.py /imagenet --model lvvit_s --token-label --token-label-data /labels --toe
    torchrun --nproc_per_node=4 ToE/lvvit/main.py ... (see ToE/lvvit/run/)

As in timm's train.py: a positional data folder, ``-c/--config`` YAML defaults (the resolved flags are
saved as args.yaml in the run folder), an unscaled --lr, --epochs plus --cooldown-epochs epochs, the LR
schedule stepped with epoch + 1, AMP only with --amp/--apex-amp/--native-amp. Validation is full-token
for the model and its EMA.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from timm.data import create_transform
from torch.utils.data import Dataset

from ..data import build_dataset, build_eval_transform, check_same_classes
from ..data.label_transforms import build_token_label_transform
from ..data.token_label import TokenLabelDataset, TokenLabelTargets
from ..engine import DistInfo, StepHooks
from ..engine.losses import BaseLoss, TokenLabelCrossEntropy, classification_loss
from ..errors import UserError
from ..flag_types import at_least, below_one, count, fraction, non_negative, positive, probability
from ..flag_types import device as device_name
from ..models import LVViT
from ..models.factory import create_model, parse_model_kwargs
from ..options import ArgumentParser, add_toe_arguments, may_change_on_resume, run_main
from .build import attach_toe, build_run, load_finetune_weights, n_parameters
from .flags import (
    add_engine_arguments,
    add_eval_argument,
    check_even_batch,
    check_model_kwargs,
    check_start_epoch,
    epoch_schedule,
    mixup_active,
    mixup_from_args,
)
from .skeleton import Recipe, Say, run_recipe
from .yaml_config import parse_with_config, save_args_yaml


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="ToE/lvvit/main.py",
        description="LV-ViT training with token labeling and MixToken, with Token Expansion (ToE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    may_change_on_resume(
        p.add_argument("-c", "--config", default="", metavar="FILE", help="YAML of flag defaults (keys: flag names)")
    )
    may_change_on_resume(
        p.add_argument("data_dir", metavar="DIR", help="dataset root with train/ and val/ (one folder per class)")
    )

    g = p.add_argument_group("model")
    g.add_argument("--model", default="lvvit_s", help="model name (lvvit_t/s/m/l or any timm model)")
    g.add_argument("--img-size", type=at_least(8), default=None, help="input size (default: the model's)")
    g.add_argument(
        "--crop-pct", type=fraction, default=None, help="validation centre-crop ratio (default: the model's)"
    )
    g.add_argument("--num-classes", type=int, default=None, help="number of classes (default: from the data)")
    g.add_argument("--drop", type=below_one, default=0.0, help="dropout rate")
    g.add_argument("--drop-path", type=below_one, default=None, help="drop path rate (default: the model's)")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights")
    g.add_argument("--model-ema-decay", type=probability, default=0.99992)
    g.add_argument("--model-ema-force-cpu", action="store_true")
    may_change_on_resume(g.add_argument("--finetune", default="", help="weights to fine-tune from (file or https URL)"))
    may_change_on_resume(g.add_argument("--channels-last", action="store_true", help="channels-last memory layout"))

    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="adamw")
    g.add_argument("--opt-eps", type=non_negative, default=None)
    g.add_argument("--opt-betas", type=below_one, nargs=2, default=None, metavar=("BETA1", "BETA2"))
    g.add_argument("--momentum", type=probability, default=0.9)
    g.add_argument("--weight-decay", type=non_negative, default=0.05)
    g.add_argument("--clip-grad", type=non_negative, default=None, help="gradient clipping (off)")
    g.add_argument("--clip-mode", default="norm", choices=["norm", "value", "agc"])

    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--sched", default="cosine")
    g.add_argument("--lr", type=non_negative, default=1.6e-3, help="learning rate (not scaled by the batch size)")
    g.add_argument("--lr-noise", type=float, nargs="+", default=None)
    g.add_argument("--lr-noise-pct", type=float, default=0.67)
    g.add_argument("--lr-noise-std", type=float, default=1.0)
    g.add_argument("--lr-cycle-mul", type=float, default=1.0)
    g.add_argument("--lr-cycle-limit", type=int, default=1)
    g.add_argument("--warmup-lr", type=non_negative, default=1e-6)
    g.add_argument("--min-lr", type=non_negative, default=1e-5)
    g.add_argument("--epochs", type=positive, default=300, help="epochs before the cool-down")
    may_change_on_resume(g.add_argument("--start-epoch", type=int, default=0, help="first epoch when not resuming"))
    g.add_argument("--decay-epochs", type=float, default=30)
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--cooldown-epochs", type=count, default=10, help="epochs at --min-lr after --epochs")
    g.add_argument("--patience-epochs", type=int, default=10)
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1)

    g = p.add_argument_group("augmentation")
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="random resized crop area range")
    g.add_argument("--ratio", type=float, nargs=2, default=[3 / 4, 4 / 3], help="random resized crop aspect range")
    g.add_argument("--hflip", type=probability, default=0.5, help="horizontal flip probability")
    g.add_argument("--color-jitter", type=non_negative, default=0.4, help="colour jitter (only without --aa)")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="RandAugment policy ('none' to disable)")
    g.add_argument("--reprob", type=probability, default=0.25, help="random erase probability")
    g.add_argument("--remode", default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--mixup", type=non_negative, default=0.0, help="mixup alpha (not with --token-label)")
    g.add_argument("--cutmix", type=non_negative, default=0.0, help="cutmix alpha (not with --token-label)")
    g.add_argument("--cutmix-minmax", type=float, nargs="+", default=None)
    g.add_argument("--mixup-prob", type=probability, default=1.0)
    g.add_argument("--mixup-switch-prob", type=probability, default=0.5)
    g.add_argument("--mixup-mode", default="batch", choices=["batch", "pair", "elem"])
    g.add_argument("--smoothing", type=below_one, default=0.1, help="label smoothing")
    g.add_argument("--train-interpolation", default="random", help="bilinear, bicubic or random")

    g = p.add_argument_group("token labeling")
    g.add_argument("--token-label", action="store_true", help="train on token labels (dense loss and MixToken)")
    may_change_on_resume(
        g.add_argument("--token-label-data", default="", help="folder of label files (see generate_label.py)")
    )
    g.add_argument(
        "--token-label-size",
        type=positive,
        default=None,
        help="token-label grid (default: the model's token grid, 14 at 224 px; 1: class-level soft labels only)",
    )
    g.add_argument("--dense-weight", type=float, default=1.0, help="weight of the dense (token) loss")
    g.add_argument("--cls-weight", type=float, default=1.0, help="weight of the class loss")
    g.add_argument(
        "--ground-truth",
        action="store_true",
        help="blend the class target with the smoothed ground-truth label (weight 0.1 where the label map's top "
        "class is wrong, 0.5 where right; as TokenLabeling; with dense targets only)",
    )
    g.add_argument(
        "--token-label-roi",
        choices=["xy", "upstream"],
        default="xy",
        help="xy: targets from the crop's own region of the label map; upstream: TokenLabeling's roi_align call, "
        "which reads the crop box as (y, x) and so the transposed region for crops off the diagonal (exact "
        "reproduction of upstream runs)",
    )

    g = p.add_argument_group("run")
    g.add_argument("-b", "--batch-size", type=positive, default=32, help="batch size per process")
    may_change_on_resume(
        g.add_argument("-vb", "--validation-batch-size", type=int, default=None, help="default: --batch-size")
    )
    may_change_on_resume(
        g.add_argument("-j", "--workers", type=count, default=4, help="data loading processes per training process")
    )
    may_change_on_resume(g.add_argument("--pin-mem", action="store_true", help="pin loader memory (CUDA)"))
    may_change_on_resume(
        g.add_argument("--output", default="", help="run folder for checkpoints and logs (nothing saved if empty)")
    )
    g.add_argument("--eval-metric", default="top1", choices=["top1"], help="metric of the best checkpoints")
    g.add_argument("--seed", type=int, default=42)
    may_change_on_resume(g.add_argument("--resume", default="", help="checkpoint to resume from"))
    add_eval_argument(g)
    may_change_on_resume(
        g.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    )
    may_change_on_resume(g.add_argument("--amp", action="store_true", help="mixed precision (native AMP)"))
    may_change_on_resume(g.add_argument("--native-amp", action="store_true", help="same as --amp"))
    may_change_on_resume(
        g.add_argument(
            "--local-rank",
            "--local_rank",
            dest="local_rank",
            type=int,
            default=int(os.environ.get("LOCAL_RANK", "0")),
            help="set by the launcher (torchrun sets LOCAL_RANK)",
        )
    )

    add_engine_arguments(p)
    add_toe_arguments(p, "lvvit")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Flags, with the values of a ``-c/--config`` YAML file as defaults (command-line flags win)."""
    return parse_with_config(build_parser(), argv)


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations that make no sense, caught before any work."""
    if not Path(args.data_dir).is_dir():
        raise UserError(f"data folder {args.data_dir} does not exist (expected DIR/train and DIR/val)")
    if args.token_label:
        if not args.token_label_data:
            raise UserError("--token-label needs --token-label-data (the label files of generate_label.py)")
        if mixup_active(args):
            raise UserError("--mixup/--cutmix do not combine with --token-label (MixToken mixes tokens); set them to 0")
    else:
        for flag, given in (
            ("--token-label-data", args.token_label_data),
            ("--token-label-size", args.token_label_size is not None),
            ("--ground-truth", args.ground_truth),
            ("--token-label-roi upstream", args.token_label_roi != "xy"),
        ):
            if given:
                raise UserError(f"{flag} needs --token-label")
    check_even_batch(args)
    end = args.epochs + args.cooldown_epochs
    check_start_epoch(args, end, f"--epochs {args.epochs} + --cooldown-epochs {args.cooldown_epochs}")
    check_model_kwargs(
        args.model_kwargs,
        {
            "img_size": ("--img-size", args.img_size),
            "drop_rate": ("--drop", args.drop),
            "drop_path_rate": ("--drop-path", args.drop_path),
            "num_classes": ("--num-classes", args.num_classes),
        },
    )


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if args.local_rank and "LOCAL_RANK" not in os.environ:  # torch.distributed.launch passes --local_rank
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    try:
        return run_recipe(parser, args, _build, check_args, output=(args.output, "--output"))
    except UserError as error:
        raise _without_worker_traceback(error) from None


def _build(args: argparse.Namespace, dist: DistInfo, token_select, output_dir: Path | None, say: Say) -> Recipe:
    data = Path(args.data_dir)

    torch.manual_seed(args.seed)  # identical initial weights on every process
    model_kwargs = {
        "drop_rate": args.drop,
        **({"drop_path_rate": args.drop_path} if args.drop_path is not None else {}),
        **({"img_size": args.img_size} if args.img_size else {}),
        **parse_model_kwargs(args.model_kwargs),
    }
    num_classes = args.num_classes or _class_count(data / "train")
    model = create_model(args.model, num_classes, **model_kwargs)
    input_size = _input_size(model, args.img_size)
    label_size = _configure_token_labels(model, args)

    crop_pct = args.crop_pct or _pretrained_cfg(model).get("crop_pct", 0.875)
    train_set, val_set = _datasets(args, data, input_size, crop_pct, num_classes)

    if args.finetune:
        say(load_finetune_weights(model, args.finetune))
    attach_toe(model, token_select, args.model)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    if args.token_label:
        grid = getattr(train_set, "label_grid", (label_size, label_size))
        if label_size > 1 and grid != (label_size, label_size):
            say(
                f"note: the label files hold {grid[0]}x{grid[1]} maps; each is resampled to the "
                f"{label_size}x{label_size} token grid"
            )
        loss: torch.nn.Module = TokenLabelCrossEntropy(args.cls_weight, args.dense_weight)
        hooks = StepHooks(
            prepare=TokenLabelTargets(num_classes, label_size, args.smoothing, args.ground_truth, args.token_label_roi)
        )
    else:
        loss = BaseLoss(classification_loss(mixup_active(args), args.smoothing, bce=False))
        hooks = StepHooks(mixup=mixup_from_args(args, num_classes))
    run = build_run(
        args,
        model,
        (train_set, val_set),
        loss,
        dist,
        output_dir=output_dir,
        lr_schedule=epoch_schedule(args, epoch_offset=1),  # timm's train.py: lr_scheduler.step(epoch + 1)
        amp=(args.amp or args.apex_amp or args.native_amp) and not args.no_amp,
        num_workers=args.workers,
        eval_batch_size=args.validation_batch_size or args.batch_size,
        dist_eval=dist.enabled,
        hooks=hooks,
    )

    def eval_report(metrics: dict) -> list[str]:
        lines = [
            f"{args.model} on the {len(val_set)} validation images: top-1 {metrics['test_acc1']:.2f}%, "
            f"top-5 {metrics['test_acc5']:.2f}%, loss {metrics['test_loss']:.4f}"
        ]
        if "test_ema_acc1" in metrics:
            lines.append(f"EMA on the {len(val_set)} validation images: top-1 {metrics['test_ema_acc1']:.2f}%")
        return lines

    def header() -> str:
        epochs = run.settings.epochs
        return (
            f"{args.model}: {n_parameters(model) / 1e6:.2f}M parameters, {num_classes} classes, {len(train_set)} "
            f"training images at {input_size} px, {dist.world_size} process(es) on {dist.device}, "
            f"{run.parts.precision.name}, lr {args.lr:.2e}, {epochs} epochs ({args.epochs} + {epochs - args.epochs} "
            "cool-down), " + (f"token labels {label_size}x{label_size}" if args.token_label else "no token labels")
        )

    return Recipe(run, header, eval_report, save_flags=save_args_yaml)


def _datasets(args: argparse.Namespace, data: Path, input_size: int, crop_pct: float, num_classes: int):
    """Training set (with label maps under --token-label) and validation set, checked against each other."""
    if args.token_label:
        transform = build_token_label_transform(
            input_size,
            args.aa,
            args.train_interpolation,
            args.reprob,
            args.remode,
            args.recount,
            args.color_jitter,
            args.hflip,
            tuple(args.scale),
            tuple(args.ratio),
        )
        train_set: Dataset = TokenLabelDataset(data / "train", args.token_label_data, transform)
    else:
        transform = create_transform(
            input_size,
            is_training=True,
            scale=tuple(args.scale),
            ratio=tuple(args.ratio),
            hflip=args.hflip,
            color_jitter=args.color_jitter,
            auto_augment=None if args.aa in ("", "none") else args.aa,
            interpolation=args.train_interpolation,
            re_prob=args.reprob,
            re_mode=args.remode,
            re_count=args.recount,
        )
        train_set, _ = build_dataset("IMNET", data, True, transform)
    val_set, val_classes = build_dataset("IMNET", data, False, build_eval_transform(input_size, crop_pct))
    check_same_classes(train_set, val_set, f"{data}/train", f"{data}/val")
    if val_classes != num_classes:
        raise UserError(f"--num-classes {num_classes} does not match the {val_classes} class folders of {data}/train")
    return train_set, val_set


def _configure_token_labels(model: torch.nn.Module, args: argparse.Namespace) -> int:
    """Switch the LV-ViT's dense output and MixToken on with token labels (size > 1), off otherwise;
    return the token-label size (the model's grid unless --token-label-size says otherwise)."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    size = args.token_label_size or (grid[0] if grid else 1)
    dense = args.token_label and size > 1
    if isinstance(model, LVViT):
        model.return_dense = model.mix_token = dense
    elif dense:
        raise UserError(f"--token-label needs an LV-ViT model (lvvit_t/s/m/l), not {args.model}")
    lvvit_grid = cast(tuple[int, int], grid)  # read only when dense: an LV-ViT's ConvStem grid (else raised above)
    if dense and tuple(lvvit_grid) != (size, size):
        raise UserError(
            f"--token-label-size {size} must be 1 or the model's token grid {lvvit_grid[0]} (--img-size / patch size)"
        )
    return size


def _input_size(model: torch.nn.Module, img_size: int | None) -> int:
    """The model's input size: its patch embedding's, else --img-size, else its default configuration's."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        return int(size[0])
    return img_size or int(_pretrained_cfg(model).get("input_size", (3, 224, 224))[-1])


def _pretrained_cfg(model: torch.nn.Module) -> dict[str, Any]:
    """The default configuration timm's create_model attached to the model (a dict)."""
    return cast(dict[str, Any], model.pretrained_cfg)


def _class_count(folder: Path) -> int:
    if not folder.is_dir():
        raise UserError(f"data folder {folder} does not exist (expected train/ and val/ with one folder per class)")
    return sum(1 for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _without_worker_traceback(error: UserError) -> UserError:
    """A UserError raised in a DataLoader worker comes back with the worker's traceback in its message;
    keep the one sentence."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return UserError(last[len(prefix) :]) if last.startswith(prefix) else error


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
