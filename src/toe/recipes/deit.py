"""The DeiT recipe (facebookresearch/deit main.py flags) with Token Expansion, on the shared engine.

    python ToE/deit/main.py --model deit_small_patch16_224 --data-path /imagenet --output_dir out --toe
    torchrun --nproc_per_node=4 ToE/deit/main.py ... (see ToE/deit/run/)

Without the ToE flags this is plain DeiT training (the baseline).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch.utils.data import Dataset

from ..data import DATA_SETS, build_dataset, build_eval_transform, build_train_transform, check_same_classes
from ..engine import DistInfo, StepHooks, load_weights
from ..engine.losses import DISTILLATION_TYPES, BaseLoss, DistillationLoss, classification_loss
from ..errors import UserError, state_dict_mismatch
from ..flag_types import at_least, below_one, count, fraction, non_negative, positive, probability
from ..flag_types import device as device_name
from ..models.factory import check_input_size, create_model, parse_model_kwargs
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

if TYPE_CHECKING:
    from timm.models.deit import VisionTransformerDistilled


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="ToE/deit/main.py",
        description="DeiT training and evaluation with Token Expansion (ToE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--batch-size", default=64, type=positive, help="batch size per process")
    p.add_argument("--epochs", default=300, type=positive)
    p.add_argument(
        "--bce-loss",
        action="store_true",
        help="binary cross-entropy on the (mixed) targets binarised as DeiT III (every class above 0 is a positive; "
        "DeiT III uses it with --smoothing 0, as smoothed targets are all positive)",
    )
    p.add_argument("--unscale-lr", action="store_true", help="do not scale --lr by total batch / 512")
    p.add_argument("--accum-iter", default=1, type=positive, help="gradient accumulation steps per update")

    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="deit_base_patch16_224",
        type=str,
        help="timm model name; ToE also works with distilled deit_* and vit_* models (upstream's ToE patches "
        "deit_* only and fails with distillation)",
    )
    g.add_argument("--input-size", default=224, type=at_least(8), help="image size")
    g.add_argument("--patch-size", default=None, type=int, help="patch size (default: the model's, 16 for deit_*)")
    g.add_argument("--drop", type=below_one, default=0.0, help="dropout rate")
    g.add_argument("--drop-path", type=below_one, default=0.1, help="drop path rate")
    g.add_argument(
        "--model-ema", action=argparse.BooleanOptionalAction, default=True, help="keep an EMA of the weights"
    )
    g.add_argument("--model-ema-decay", type=probability, default=0.99996)
    g.add_argument("--model-ema-force-cpu", action="store_true")

    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="adamw", type=str)
    g.add_argument("--opt-eps", default=1e-8, type=non_negative)
    g.add_argument("--opt-betas", default=None, type=below_one, nargs=2, metavar=("BETA1", "BETA2"))
    g.add_argument("--clip-grad", type=non_negative, default=None, help="gradient clipping norm (off)")
    g.add_argument("--clip-mode", type=str, default="norm", choices=["norm", "value", "agc"])
    g.add_argument("--momentum", type=probability, default=0.9)
    g.add_argument("--weight-decay", type=non_negative, default=0.05)

    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--sched", default="cosine", type=str)
    g.add_argument("--lr", type=non_negative, default=5e-4, help="learning rate at total batch 512 (scaled linearly)")
    g.add_argument("--lr-noise", type=float, nargs="+", default=None)
    g.add_argument("--lr-noise-pct", type=float, default=0.67)
    g.add_argument("--lr-noise-std", type=float, default=1.0)
    g.add_argument("--warmup-lr", type=non_negative, default=1e-6)
    g.add_argument("--min-lr", type=non_negative, default=1e-5)
    g.add_argument("--decay-epochs", type=float, default=30)
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--cooldown-epochs", type=int, default=10)
    g.add_argument("--patience-epochs", type=int, default=10)
    g.add_argument("--decay-rate", "--dr", type=float, default=0.1)

    g = p.add_argument_group("augmentation")
    g.add_argument("--color-jitter", type=non_negative, default=0.3)
    g.add_argument("--aa", type=str, default="rand-m9-mstd0.5-inc1", help="RandAugment policy ('none' to disable)")
    g.add_argument("--smoothing", type=below_one, default=0.1, help="label smoothing")
    g.add_argument("--train-interpolation", type=str, default="bicubic")
    g.add_argument(
        "--repeated-aug",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="repeated augmentation x3 (when distributed)",
    )
    g.add_argument("--ThreeAugment", action="store_true", help="DeiT III 3-Augment instead of RandAugment")
    g.add_argument("--src", action="store_true", help="simple random crop (with --ThreeAugment)")
    g.add_argument("--reprob", type=probability, default=0.25, help="random erase probability")
    g.add_argument("--remode", type=str, default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument(
        "--resplit",
        action="store_true",
        help="accepted for upstream's command lines; no effect there or here (no augmentation splits)",
    )
    g.add_argument("--mixup", type=non_negative, default=0.8)
    g.add_argument("--cutmix", type=non_negative, default=1.0)
    g.add_argument("--cutmix-minmax", type=float, nargs="+", default=None)
    g.add_argument("--mixup-prob", type=probability, default=1.0)
    g.add_argument("--mixup-switch-prob", type=probability, default=0.5)
    g.add_argument("--mixup-mode", type=str, default="batch", choices=["batch", "pair", "elem"])

    g = p.add_argument_group("distillation")
    g.add_argument("--teacher-model", default="regnety_160", type=str)
    may_change_on_resume(
        g.add_argument("--teacher-path", type=str, default="", help="teacher weights (file or https URL)")
    )
    g.add_argument("--distillation-type", default="none", choices=DISTILLATION_TYPES)
    g.add_argument("--distillation-alpha", default=0.5, type=float)
    g.add_argument("--distillation-tau", default=1.0, type=float)
    g.add_argument("--cosub", action="store_true", help="not supported (DeiT III co-training); train without it")

    g = p.add_argument_group("fine-tuning")
    may_change_on_resume(g.add_argument("--finetune", default="", help="weights to fine-tune from (file or https URL)"))
    g.add_argument(
        "--attn-only",
        action="store_true",
        help="train only the attention layers, the position embedding and the class head (head_dist stays frozen)",
    )

    g = p.add_argument_group("data and run")
    may_change_on_resume(g.add_argument("--data-path", default="data/imagenet", type=str, help="dataset root"))
    g.add_argument(
        "--data-set",
        default="IMNET",
        choices=DATA_SETS,
        help="IMNET = any ImageNet-layout folder (train/, val/; the class count is that of the class folders, "
        "where upstream fixes 1000)",
    )
    g.add_argument(
        "--inat-category",
        default="name",
        choices=["kingdom", "phylum", "class", "order", "supercategory", "family", "genus", "name"],
        help="accepted for upstream's command lines; only iNaturalist uses it, which is read in ImageNet layout "
        "(--data-set IMNET)",
    )
    may_change_on_resume(g.add_argument("--download", action="store_true", help="download CIFAR into --data-path"))
    may_change_on_resume(
        g.add_argument("--output_dir", default="", help="where to save checkpoints and logs (nothing saved if empty)")
    )
    may_change_on_resume(
        g.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    )
    g.add_argument("--seed", default=0, type=int)
    may_change_on_resume(
        g.add_argument(
            "--resume",
            default="",
            help="checkpoint to resume from (the LR schedule continues where it was saved; upstream skips one value)",
        )
    )
    may_change_on_resume(g.add_argument("--start_epoch", default=0, type=int, help="first epoch when not resuming"))
    add_eval_argument(g)
    g.add_argument("--eval-crop-ratio", default=0.875, type=fraction)
    may_change_on_resume(g.add_argument("--dist-eval", action="store_true", help="distributed evaluation"))
    may_change_on_resume(g.add_argument("--num_workers", default=10, type=count))
    may_change_on_resume(g.add_argument("--pin-mem", action=argparse.BooleanOptionalAction, default=True))
    g.add_argument(
        "--train-mode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the model in training mode (dropout, drop path); --no-train-mode trains it in eval mode, as "
        "DeiT fine-tuning does, with ToE still reducing the tokens",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="accepted for upstream's command lines: torchrun's environment decides whether the run is distributed",
    )
    g.add_argument("--world_size", default=1, type=int, help="set by torchrun (WORLD_SIZE)")
    may_change_on_resume(g.add_argument("--dist_url", default="env://", help="distributed rendezvous"))

    add_engine_arguments(p)
    add_toe_arguments(p, "deit")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations that make no sense, caught before any work."""
    check_even_batch(args)
    if args.distillation_type != "none" and not args.teacher_path:
        raise UserError(f"--distillation-type {args.distillation_type} needs --teacher-path")
    if args.distillation_type != "none" and not args.train_mode:
        raise UserError(
            "--no-train-mode cannot distil: a distilled model in eval mode returns one averaged output, not its "
            "class and distillation outputs"
        )
    if args.cosub:
        raise UserError(
            "--cosub (DeiT III's co-training of two sub-models) is not supported: train without it (--bce-loss, "
            "--ThreeAugment and the other DeiT III flags work)"
        )
    if args.src and not args.ThreeAugment:
        raise UserError("--src only applies with --ThreeAugment")
    if args.data_set == "IMNET" and not Path(args.data_path).is_dir():
        raise UserError(f"--data-path {args.data_path} does not exist")
    check_start_epoch(args, args.epochs, f"--epochs is {args.epochs}")
    check_model_kwargs(
        args.model_kwargs,
        {
            "img_size": ("--input-size", args.input_size),
            "patch_size": ("--patch-size", args.patch_size),
            "drop_rate": ("--drop", args.drop),
            "drop_path_rate": ("--drop-path", args.drop_path),
        },
    )


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_recipe(parser, args, _build, check_args, dist_url=args.dist_url)


def _build(args: argparse.Namespace, dist: DistInfo, token_select, output_dir: Path | None, say: Say) -> Recipe:
    datasets, num_classes = _datasets(args)
    model = _model(args, num_classes, token_select, say)

    world_batch = args.batch_size * dist.world_size * args.accum_iter
    if not args.unscale_lr:
        args.lr = args.lr * world_batch / 512.0
    run = build_run(
        args,
        model,
        datasets,
        _loss(args, num_classes, dist.device),
        dist,
        output_dir=output_dir,
        lr_schedule=epoch_schedule(args, epoch_offset=0),  # DeiT: lr_scheduler.step(epoch)
        amp=not args.no_amp,
        num_workers=args.num_workers,
        eval_batch_size=int(1.5 * args.batch_size),
        dist_eval=args.dist_eval,
        epochs=args.epochs,
        accum_steps=args.accum_iter,
        repeated_aug=args.repeated_aug,
        hooks=StepHooks(mixup=mixup_from_args(args, num_classes)),
        train_mode=args.train_mode,
    )
    val_images = len(cast(Sized, datasets[1]))

    def eval_report(metrics: dict) -> list[str]:
        lines = [
            f"Accuracy of the network on the {val_images} test images: {metrics['test_acc1']:.2f}% "
            f"(top-5 {metrics['test_acc5']:.2f}%, loss {metrics['test_loss']:.4f})"
        ]
        if "test_ema_acc1" in metrics:
            lines.append(f"Accuracy of the EMA on the {val_images} test images: {metrics['test_ema_acc1']:.2f}%")
        return lines

    def header() -> str:
        return (
            f"{args.model}: {n_parameters(model) / 1e6:.2f}M parameters, {num_classes} classes, "
            f"{len(cast(Sized, datasets[0]))} training images, {dist.world_size} process(es) on {dist.device}, "
            f"{run.parts.precision.name}, lr {args.lr:.2e} at total batch {world_batch}"
        )

    return Recipe(run, header, eval_report)


def _datasets(args: argparse.Namespace) -> tuple[tuple[Dataset, Dataset], int]:
    """(train, val) with DeiT's transforms, and the class count."""
    train_transform = build_train_transform(
        args.input_size,
        args.color_jitter,
        args.aa,
        args.train_interpolation,
        args.reprob,
        args.remode,
        args.recount,
        three_augment=args.ThreeAugment,
        simple_random_crop=args.src,
    )
    train_set, num_classes = build_dataset(args.data_set, args.data_path, True, train_transform, args.download)
    eval_transform = build_eval_transform(args.input_size, args.eval_crop_ratio)
    val_set, _ = build_dataset(args.data_set, args.data_path, False, eval_transform, args.download)
    check_same_classes(train_set, val_set, f"{args.data_path}/train", f"{args.data_path}/val")
    return (train_set, val_set), num_classes


def _model(args: argparse.Namespace, num_classes: int, token_select, say) -> torch.nn.Module:
    """The timm model (fine-tuned, attention-only, distilled as asked) with ToE attached."""
    torch.manual_seed(args.seed)  # identical initial weights on every process
    model_kwargs = {
        "img_size": args.input_size,
        "drop_rate": args.drop,
        "drop_path_rate": args.drop_path,
        **({"patch_size": args.patch_size} if args.patch_size else {}),
        **parse_model_kwargs(args.model_kwargs),
    }
    model = create_model(args.model, num_classes, **model_kwargs)
    check_input_size(model, args.input_size)
    if args.finetune:
        say(load_finetune_weights(model, args.finetune))
    if args.attn_only:
        _train_attention_only(model)
    attach_toe(model, token_select, args.model)
    if args.distillation_type != "none":
        if not hasattr(model, "set_distilled_training"):
            raise UserError(
                f"--distillation-type {args.distillation_type} needs a distilled model "
                f"(deit_*_distilled_*), not {args.model}"
            )
        cast("VisionTransformerDistilled", model).set_distilled_training(True)
    return model


def _loss(args: argparse.Namespace, num_classes: int, device: torch.device) -> torch.nn.Module:
    """DeiT's classification loss, wrapped in the distillation loss with a teacher."""
    base_loss = classification_loss(mixup_active(args), args.smoothing, args.bce_loss)
    if args.distillation_type == "none":
        return BaseLoss(base_loss)
    teacher = _build_teacher(args, num_classes, device)
    return DistillationLoss(base_loss, teacher, args.distillation_type, args.distillation_alpha, args.distillation_tau)


def _train_attention_only(model: torch.nn.Module) -> None:
    """DeiT's --attn-only: train the attention layers, the position embedding and the class head; everything
    else (the distillation head too) stays frozen."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = ".attn." in name or name == "pos_embed" or name.startswith("head.")


def _build_teacher(args, num_classes: int, device: torch.device) -> torch.nn.Module:
    teacher = create_model(args.teacher_model, num_classes)
    state = load_weights(args.teacher_path, "--teacher-path")
    try:
        teacher.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(
            f"--teacher-path {args.teacher_path} does not fit --teacher-model {args.teacher_model} "
            f"({state_dict_mismatch(error)})"
        ) from None
    return teacher.to(device).eval()


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
