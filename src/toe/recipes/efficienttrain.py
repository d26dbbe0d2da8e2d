"""EfficientTrain's trainer (ConvNeXt-style flags) with Token Expansion: one curriculum stage per call.

    python ToE/EfficientTrain/main.py --model deit_small_patch16_224 --data_path /imagenet --output_dir out \\
        --input_size 160 --load_size 224 --end_epoch 60 --aa rand-m1-mstd0.5-inc1 --batch_size 512 --toe

``ToE/EfficientTrain/ET_training.py`` (``toe.recipes.et_training``) runs the five stages of the curriculum
through :func:`train_stage`. A stage trains a model built at ``--input_size`` from the epoch after the last
checkpoint up to ``--end_epoch`` of a per-iteration cosine schedule over all ``--epochs``; images are loaded
at ``--load_size`` (upstream's ``--base_input_size``, default 224) and their spectrum is cropped to
``--input_size`` on the device (``--low_freq fourier``),
or they are loaded at ``--input_size`` directly (``--low_freq downsample``, EfficientTrain++). A checkpoint
of another input size is adapted first: position embedding and optimizer moments are resampled.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler
from torch.utils.data import Dataset

from ..data import build_dataset, build_eval_transform, build_train_transform
from ..data.datasets import check_same_classes, image_folder
from ..data.fourier import FourierCrop
from ..engine import FoundCheckpoint, LRSchedule, StepHooks
from ..engine.distributed import DistInfo
from ..engine.losses import BaseLoss, classification_loss
from ..errors import UserError
from ..flag_types import below_one, count, fraction, non_negative, positive, probability
from ..flag_types import device as device_name
from ..models.factory import create_model, parse_model_kwargs
from ..options import ArgumentParser, add_toe_arguments, may_change_on_resume, run_main
from .build import attach_toe, build_run, n_parameters
from .flags import add_engine_arguments, check_even_batch, check_start_epoch, mixup_active, mixup_from_args
from .resample import resample_checkpoint
from .skeleton import Recipe, Say, run_recipe

DATA_SETS = ("IMNET", "CIFAR", "image_folder")
# flags the curriculum sets per stage (ET_training.py): they differ between the stages of one run
STAGE_FLAGS = ("input_size", "load_size", "batch_size", "update_freq", "end_epoch", "aa")
LOW_FREQ = ("fourier", "downsample")
BASE_INPUT_SIZE = 224  # upstream main.py's --base_input_size: images are loaded at it, smaller sizes Fourier-cropped


def str2bool(value: str) -> bool:
    """ConvNeXt's boolean flags: ``--use_amp true`` / ``false`` (also yes/no, 1/0)."""
    lowered = value.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser(prog: str = "ToE/EfficientTrain/main.py", stage: bool = True) -> ArgumentParser:
    """The trainer's flags; ``stage=False`` leaves out those the curriculum driver sets per stage."""
    p = ArgumentParser(
        prog=prog,
        description="EfficientTrain training (ConvNeXt-style flags) with Token Expansion (ToE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # --eval must not be read as --eval_data_path
    )
    p.add_argument("--epochs", default=300, type=positive, help="length of the whole run (the LR schedule)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="convnext_tiny", type=str, help="timm model name")
    drop_path_help = "drop path rate" + (
        "" if stage else " (for the models of upstream's table its value: 0.1 for deit_tiny/small_patch16_224, ...)"
    )
    g.add_argument("--drop_path", type=below_one, default=0.0, help=drop_path_help)
    g.add_argument("--model_ema", type=str2bool, default=False, help="keep an EMA of the weights (true/false)")
    g.add_argument("--model_ema_decay", type=probability, default=0.9999)
    g.add_argument("--model_ema_force_cpu", type=str2bool, default=False)

    g = p.add_argument_group("optimizer and schedule (per-iteration cosine with linear warm-up from 0)")
    g.add_argument("--opt", default="adamw", type=str)
    g.add_argument("--opt_eps", default=1e-8, type=non_negative)
    g.add_argument("--opt_betas", default=None, type=below_one, nargs=2, metavar=("BETA1", "BETA2"))
    g.add_argument("--clip_grad", type=non_negative, default=None, help="gradient clipping norm (off)")
    g.add_argument("--momentum", type=probability, default=0.9)
    g.add_argument("--weight_decay", type=non_negative, default=0.05)
    g.add_argument("--lr", type=non_negative, default=4e-3, help="peak learning rate (not scaled by the batch)")
    g.add_argument("--min_lr", type=non_negative, default=1e-6)
    g.add_argument("--warmup_epochs", type=count, default=20)
    may_change_on_resume(g.add_argument("--use_amp", type=str2bool, default=False, help="mixed precision (true/false)"))

    g = p.add_argument_group("augmentation")
    g.add_argument("--color_jitter", type=non_negative, default=0.4)
    g.add_argument("--smoothing", type=below_one, default=0.1, help="label smoothing")
    g.add_argument("--train_interpolation", type=str, default="bicubic")
    g.add_argument("--crop_pct", type=fraction, default=0.875, help="eval: resize to size / crop_pct, centre crop")
    g.add_argument("--reprob", type=probability, default=0.25, help="random erase probability")
    g.add_argument("--remode", type=str, default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--mixup", type=non_negative, default=0.8)
    g.add_argument("--cutmix", type=non_negative, default=1.0)
    g.add_argument("--cutmix_minmax", type=float, nargs="+", default=None)
    g.add_argument("--mixup_prob", type=probability, default=1.0)
    g.add_argument("--mixup_switch_prob", type=probability, default=0.5)
    g.add_argument("--mixup_mode", type=str, default="batch", choices=["batch", "pair", "elem"])
    g.add_argument(
        "--low_freq",
        choices=LOW_FREQ,
        default="fourier",
        help="how images below the load size are made: fourier = crop the spectrum on the device "
        "(EfficientTrain; unlike upstream, an odd size s gives s pixels, not s - 1, and bf16 batches work), "
        "downsample = load them small in the CPU pipeline (EfficientTrain++)",
    )

    g = p.add_argument_group("data and run")
    may_change_on_resume(
        g.add_argument("--data_path", default="data/imagenet", type=str, help="dataset root (train/ and val/)")
    )
    may_change_on_resume(
        g.add_argument("--eval_data_path", default=None, type=str, help="validation folder (--data_set image_folder)")
    )
    g.add_argument(
        "--data_set",
        default="IMNET",
        choices=DATA_SETS,
        help="IMNET = ImageNet layout (class count inferred), CIFAR = CIFAR-100, image_folder = "
        "--data_path and --eval_data_path as class folders",
    )
    may_change_on_resume(g.add_argument("--output_dir", default="", help="where to save checkpoints and logs"))
    may_change_on_resume(
        g.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    )
    g.add_argument("--seed", default=0, type=int)
    may_change_on_resume(
        g.add_argument("--auto_resume", type=str2bool, default=True, help="continue from <output_dir>/checkpoint.pth")
    )
    may_change_on_resume(g.add_argument("--dist_eval", type=str2bool, default=True, help="distributed evaluation"))
    may_change_on_resume(g.add_argument("--num_workers", default=10, type=count))
    may_change_on_resume(g.add_argument("--pin_mem", type=str2bool, default=True))
    may_change_on_resume(g.add_argument("--dist_url", default="env://", help="distributed rendezvous"))

    add_engine_arguments(p, upstream_switches=False)  # --use_amp and --auto_resume are its own
    if stage:
        g = p.add_argument_group("this stage")
        g.add_argument("--input_size", default=224, type=positive, help="input size the model is built for")
        g.add_argument(
            "--load_size",
            "--base_input_size",
            dest="load_size",
            default=None,
            type=int,
            help=f"size images are loaded at, Fourier-cropped to a smaller --input_size (upstream's --base_input_size; "
            f"default {BASE_INPUT_SIZE} as upstream, or --input_size when larger)",
        )
        g.add_argument("--batch_size", default=64, type=positive, help="batch size per process")
        g.add_argument("--update_freq", default=1, type=positive, help="gradient accumulation steps per update")
        g.add_argument("--end_epoch", default=None, type=int, help="stop before this epoch (default --epochs)")
        g.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", help="RandAugment policy ('none': off)")
        may_change_on_resume(g.add_argument("--resume", default="", help="checkpoint to resume from"))
        may_change_on_resume(g.add_argument("--start_epoch", default=0, type=int, help="first epoch when not resuming"))
        may_change_on_resume(
            g.add_argument("--eval", type=str2bool, default=False, help="evaluate --resume's checkpoint only")
        )
    add_toe_arguments(p, "efficienttrain")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Mistakes in the flags every stage shares, caught before any work."""
    if args.warmup_epochs >= args.epochs:
        raise UserError(f"--warmup_epochs {args.warmup_epochs} must be below --epochs {args.epochs}")
    if args.data_set in ("IMNET", "image_folder") and not Path(args.data_path).is_dir():
        raise UserError(f"--data_path {args.data_path} does not exist")
    if args.data_set == "image_folder" and not (args.eval_data_path and Path(args.eval_data_path).is_dir()):
        raise UserError(f"--data_set image_folder needs an existing --eval_data_path, got {args.eval_data_path}")
    if "img_size" in parse_model_kwargs(args.model_kwargs):
        raise UserError("--model-kwargs img_size=... is not allowed: the input size is --input_size")


def check_stage_args(args: argparse.Namespace) -> None:
    """Mistakes in a stage's flags: those every stage shares (:func:`check_args`), then its own."""
    check_args(args)
    if args.load_size is not None and args.load_size < args.input_size:
        raise UserError(f"--load_size {args.load_size} must not be below --input_size {args.input_size}")
    if args.end_epoch is not None and not 1 <= args.end_epoch <= args.epochs:
        raise UserError(f"--end_epoch must lie in [1, --epochs {args.epochs}], got {args.end_epoch}")
    end = args.end_epoch or args.epochs
    check_start_epoch(args, end, f"this stage ends before epoch {end}")
    check_even_batch(args)


def model_patch_size(args: argparse.Namespace, num_classes: int = 1000) -> int | None:
    """Patch size of ``--model`` (None for models without a patch embedding, e.g. CNNs); built on the meta device."""
    with torch.device("meta"):
        model = create_model(args.model, num_classes, **parse_model_kwargs(args.model_kwargs))
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return None if patch is None else int(patch[0])


def cosine_per_update(args: argparse.Namespace) -> Callable[[torch.optim.Optimizer, int], LRSchedule]:
    """ConvNeXt's schedule, set every update: linear warm-up from 0 over --warmup_epochs, then cosine down
    to --min_lr at --epochs; positions count the updates of a stage's epochs (see :class:`LRSchedule`)."""

    def build(optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> LRSchedule:
        if updates_per_epoch == 0:
            raise UserError(
                f"--update_freq {args.update_freq} is more than the batches of an epoch at --batch_size "
                f"{args.batch_size}, so no update would be made (as upstream, only whole accumulation groups "
                "train); lower --update_freq (the driver: --effective_bs) or --batch_size"
            )
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=(args.epochs - args.warmup_epochs) * updates_per_epoch,
            lr_min=args.min_lr,
            warmup_t=args.warmup_epochs * updates_per_epoch,
            warmup_lr_init=0.0,
            warmup_prefix=True,
            t_in_epochs=False,
        )
        return LRSchedule(scheduler, updates_per_epoch=updates_per_epoch)

    return build


def main(argv: Sequence[str] | None = None) -> dict | None:
    return train_stage(build_parser().parse_args(argv))


def train_stage(args: argparse.Namespace, dist: DistInfo | None = None) -> dict | None:
    """Train (or with ``--eval true`` evaluate) one stage in the processes ``dist`` (the curriculum driver's;
    None: its own); returns its last log record (None if already done)."""
    return run_recipe(
        build_parser(),
        args,
        _build,
        check_stage_args,
        dist_url=args.dist_url,
        dist=dist,
        before_build=_anything_to_do,
        also_free=STAGE_FLAGS,  # a stage's own flags differ by design
    )


def _anything_to_do(args: argparse.Namespace, found: FoundCheckpoint | None, say: Say) -> bool:
    """Whether the stage has epochs to train after the checkpoint ``found`` (``--eval true``: one to evaluate)."""
    end_epoch = args.end_epoch or args.epochs
    if found is not None and not args.eval and int(found.state["epoch"]) + 1 >= end_epoch:
        say(f"epochs before {end_epoch} already done ({found.path}: epoch {found.state['epoch']})")
        return False
    if args.eval and found is None:
        raise UserError("--eval true needs a checkpoint: --resume FILE or --output_dir holding checkpoint.pth")
    return True


def _build(args: argparse.Namespace, dist: DistInfo, token_select, output_dir: Path | None, say: Say) -> Recipe:
    end_epoch = args.end_epoch or args.epochs
    load_size = args.input_size if args.low_freq == "downsample" else load_size_of(args)
    crop = FourierCrop(args.input_size) if load_size > args.input_size else None
    train_set, val_set, num_classes = _datasets(args, load_size)

    torch.manual_seed(args.seed)  # identical initial weights on every process
    model = _build_model(args, num_classes, token_select)
    run = build_run(
        args,
        model,
        (train_set, val_set),
        BaseLoss(classification_loss(mixup_active(args), args.smoothing, bce=False)),
        dist,
        output_dir=output_dir,
        lr_schedule=cosine_per_update(args),
        amp=args.use_amp,
        num_workers=args.num_workers,
        eval_batch_size=int(1.5 * args.batch_size),
        dist_eval=args.dist_eval,
        epochs=end_epoch,
        accum_steps=args.update_freq,
        drop_last_group=True,  # as upstream: len(loader) // update_freq updates per epoch
        hooks=StepHooks(prepare=crop, mixup=mixup_from_args(args, num_classes)),
        eval_prepare=crop,
        extra_log={"input_size": args.input_size},
    )

    def adapt(found: FoundCheckpoint) -> str | None:
        """A checkpoint of another stage's input size: position embedding and its optimizer moments resampled."""
        return resample_checkpoint(found.state, model, run.parts.optimizer, found.source)

    def eval_report(metrics: dict) -> list[str]:
        return [
            f"Accuracy of the network on the {len(val_set)} test images at {args.input_size} px: "
            f"{metrics['test_acc1']:.2f}% (top-5 {metrics['test_acc5']:.2f}%)"
        ]

    def header() -> str:
        low_freq = f"loaded at {load_size} px, " + ("Fourier-cropped on the device" if crop else "no crop")
        return (
            f"{args.model}: {n_parameters(model) / 1e6:.2f}M parameters, {num_classes} classes, {len(train_set)} "
            f"training images; epochs {run.state.start_epoch}-{end_epoch - 1} of {args.epochs} at "
            f"{args.input_size} px ({low_freq}), {args.aa}, batch {args.batch_size} x {args.update_freq} x "
            f"{dist.world_size}, {run.parts.precision.name}, peak lr {args.lr:.2e}"
        )

    return Recipe(run, header, eval_report, adapt=adapt, toe_epochs=args.epochs)


def load_size_of(args: argparse.Namespace) -> int:
    """The size images are loaded at before the Fourier crop: --load_size, else 224 (upstream's
    --base_input_size) or --input_size when that is larger."""
    return args.load_size or max(BASE_INPUT_SIZE, args.input_size)


def _datasets(args: argparse.Namespace, load_size: int):
    """Train and val sets with their transforms at ``load_size``, and the class count."""
    train_transform = build_train_transform(
        load_size, args.color_jitter, args.aa, args.train_interpolation, args.reprob, args.remode, args.recount
    )
    eval_transform = build_eval_transform(load_size, args.crop_pct)
    train_set: Dataset  # class folders, or a torchvision dataset (build_dataset)
    val_set: Dataset
    if args.data_set == "image_folder":
        train_set, num_classes = image_folder(Path(args.data_path), train_transform)
        val_set, _ = image_folder(Path(args.eval_data_path), eval_transform)
        check_same_classes(train_set, val_set, args.data_path, args.eval_data_path)
        return train_set, val_set, num_classes
    name = "CIFAR100" if args.data_set == "CIFAR" else "IMNET"
    download = args.data_set == "CIFAR"  # as ConvNeXt
    train_set, num_classes = build_dataset(name, args.data_path, True, train_transform, download)
    val_set, _ = build_dataset(name, args.data_path, False, eval_transform, download)
    check_same_classes(train_set, val_set, f"{args.data_path}/train", f"{args.data_path}/val")
    return train_set, val_set, num_classes


def _build_model(args: argparse.Namespace, num_classes: int, token_select) -> torch.nn.Module:
    """The timm model at ``--input_size`` (ViTs get ``img_size``; CNNs take any size), with ToE attached."""
    kwargs = {"drop_path_rate": args.drop_path, **parse_model_kwargs(args.model_kwargs)}
    patch = model_patch_size(args, num_classes)
    if patch is not None:
        if args.input_size % patch:
            raise UserError(f"--input_size {args.input_size} is not divisible by the patch size {patch}")
        kwargs["img_size"] = args.input_size
    return attach_toe(create_model(args.model, num_classes, **kwargs), token_select, args.model)


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
