"""Visual Prompt Tuning (VPT, Jia et al., ECCV 2022; KMnP/vpt) with Token Expansion, on the shared engine.

    python ToE/vpt/main.py --model vit_base_patch16_224 --finetune vit_b16_in21k.safetensors \\
        --data-path vtab-1k/dtd --train-split train800val200 --val-split test --output_dir out --toe
    torchrun --nproc_per_node=4 ToE/vpt/main.py ... (see ToE/vpt/run/)

A frozen pre-trained ViT (``--finetune``, required) learns only its prompts and classification head
(:func:`toe.vpt.apply_vpt`). The defaults are VPT's: SGD with momentum 0.9, weight decay 1e-4, base LR
scaled by total batch / 256, 10 warm-up epochs from 0 then cosine to 0 over 100 epochs, batch 128, plain
cross-entropy, no EMA; the backbone runs without dropout or drop path (VPT keeps it in eval mode);
VTAB's preprocessing (resize to 224 x 224, ImageNet mean and std, no augmentation) or, with
``--transform fgvc``, VPT's FGVC one (resize 256, random crop 224 and flip; centre crop to evaluate).
Without the ToE flags this is plain VPT (the baseline).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import cast

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.vision_transformer import VisionTransformer
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from torch.utils.data import Dataset
from torchvision import transforms as T

from ..data import build_dataset, check_same_classes
from ..data.datasets import image_folder
from ..engine import DistInfo, FoundCheckpoint, LRSchedule
from ..engine.losses import BaseLoss, classification_loss
from ..errors import UserError
from ..flag_types import at_least, below_one, count, non_negative, positive, probability
from ..flag_types import device as device_name
from ..models.factory import check_input_size, create_model, parse_model_kwargs
from ..options import ArgumentParser, add_toe_arguments, may_change_on_resume, run_main
from ..vpt import HEAD_PREFIXES, apply_vpt
from .build import attach_toe, build_run, load_finetune_weights, n_parameters
from .flags import add_engine_arguments, check_model_kwargs, check_start_epoch
from .skeleton import Recipe, Say, run_recipe

DATA_SETS = ("IMNET", "CIFAR10", "CIFAR100")
VTAB_LR_GRID = (50, 25, 10, 5, 2.5, 1, 0.5, 0.25, 0.1, 0.05)  # VPT's base LRs for VTAB (tune_vtab.py)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="ToE/vpt/main.py",
        description="Visual Prompt Tuning of a frozen pre-trained ViT, with Token Expansion (ToE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--batch-size", default=128, type=positive, help="batch size per process (VPT: 128)")
    p.add_argument("--epochs", default=100, type=positive, help="VPT: 100")
    p.add_argument("--unscale-lr", action="store_true", help="do not scale --lr by total batch / 256")
    p.add_argument("--accum-iter", default=1, type=positive, help="gradient accumulation steps per update")

    g = p.add_argument_group("model and prompts")
    g.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="timm VisionTransformer name (VPT: ViT-B/16 pre-trained on ImageNet-21k, timm's "
        "vit_base_patch16_224.orig_in21k weights)",
    )
    g.add_argument("--input-size", default=224, type=at_least(8), help="image size")
    may_change_on_resume(
        g.add_argument(
            "--finetune",
            default="",
            help="the pre-trained backbone (required unless resuming): a timm .safetensors/.pth weights file, an "
            "official DeiT/ViT checkpoint or one of this project's checkpoints, or an https URL; its classification "
            "head is left out (a new head per task, as VPT) unless the file is a prompt-tuning checkpoint of this "
            "recipe, whose prompts and head load when they fit",
        )
    )
    g.add_argument(
        "--vpt", choices=("shallow", "deep"), default="deep", help="prompts at block 0 only, or at every block"
    )
    g.add_argument(
        "--prompt-tokens",
        type=positive,
        default=50,
        metavar="N",
        help="prompt tokens per prompted block (VPT searches 1, 5, 10, 50, 100, 200 per task)",
    )
    g.add_argument("--prompt-dropout", type=below_one, default=0.1, help="dropout on the prompts (VPT: 0.1)")

    g = p.add_argument_group("optimizer")
    g.add_argument("--opt", default="sgd", type=str, help="VPT: SGD")
    g.add_argument("--opt-eps", default=None, type=non_negative)
    g.add_argument("--opt-betas", default=None, type=below_one, nargs=2, metavar=("BETA1", "BETA2"))
    g.add_argument("--momentum", type=probability, default=0.9)
    g.add_argument("--weight-decay", type=non_negative, default=1e-4, help="VPT searches 0.01, 0.001, 1e-4, 0 per task")
    g.add_argument("--clip-grad", type=non_negative, default=None, help="gradient clipping norm (off)")
    g.add_argument("--clip-mode", type=str, default="norm", choices=["norm", "value", "agc"])

    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--sched", default="cosine", type=str)
    g.add_argument(
        "--lr",
        type=non_negative,
        default=0.1,
        help="base learning rate at total batch 256 (scaled linearly); VPT searches "
        f"{', '.join(map(str, VTAB_LR_GRID))} per VTAB task",
    )
    g.add_argument("--warmup-lr", type=non_negative, default=0.0, help="VPT warms up linearly from 0")
    g.add_argument("--min-lr", type=non_negative, default=0.0, help="VPT's cosine ends at 0")
    g.add_argument("--warmup-epochs", type=count, default=10, help="VPT: 10")
    g.add_argument("--cooldown-epochs", type=int, default=0)
    g.add_argument("--smoothing", type=below_one, default=0.0, help="label smoothing (VPT: none)")

    g = p.add_argument_group("data and run")
    may_change_on_resume(g.add_argument("--data-path", default="data/vtab-1k/dtd", type=str, help="dataset root"))
    g.add_argument(
        "--data-set",
        default="IMNET",
        choices=DATA_SETS,
        help="IMNET = any folder with one sub-folder per split, each with one folder per class (VTAB-1k tasks: "
        "datasets/README.md)",
    )
    g.add_argument(
        "--train-split",
        default="train",
        help="training sub-folder of --data-path (VTAB-1k: train800 to tune, train800val200 for the final run)",
    )
    g.add_argument(
        "--val-split",
        default="val",
        help="evaluation sub-folder of --data-path (VTAB-1k: val200 to tune, test for the final run)",
    )
    g.add_argument(
        "--transform",
        choices=("vtab", "fgvc"),
        default="vtab",
        help="vtab: resize to --input-size, no augmentation; fgvc: resize to 8/7 of it, random crop and flip "
        "(centre crop to evaluate); ImageNet mean and std for both, as VPT",
    )
    may_change_on_resume(g.add_argument("--download", action="store_true", help="download CIFAR into --data-path"))
    may_change_on_resume(
        g.add_argument("--output_dir", default="", help="where to save checkpoints and logs (nothing saved if empty)")
    )
    may_change_on_resume(
        g.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    )
    g.add_argument("--seed", default=0, type=int)
    may_change_on_resume(g.add_argument("--resume", default="", help="checkpoint to resume from"))
    may_change_on_resume(g.add_argument("--start_epoch", default=0, type=int, help="first epoch when not resuming"))
    may_change_on_resume(
        g.add_argument(
            "--eval", action="store_true", help="evaluate the --resume (or --auto-resume) checkpoint and stop"
        )
    )
    may_change_on_resume(g.add_argument("--dist-eval", action="store_true", help="distributed evaluation"))
    may_change_on_resume(g.add_argument("--num_workers", default=4, type=count, help="VPT: 4"))
    may_change_on_resume(g.add_argument("--pin-mem", action=argparse.BooleanOptionalAction, default=True))
    g.add_argument("--world_size", default=1, type=int, help="set by torchrun (WORLD_SIZE)")
    may_change_on_resume(g.add_argument("--dist_url", default="env://", help="distributed rendezvous"))

    add_engine_arguments(p)
    add_toe_arguments(p, "vpt")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations that make no sense, caught before any work."""
    if args.warmup_epochs >= args.epochs:
        raise UserError(
            f"--warmup-epochs {args.warmup_epochs} leaves no epoch of the schedule: --epochs is {args.epochs}"
        )
    if not (args.finetune or args.resume or args.auto_resume):
        raise UserError(
            "--finetune is required: VPT tunes prompts on a frozen pre-trained backbone (a timm weights file or "
            "checkpoint), never on a random one"
        )
    if args.eval and not (args.resume or args.auto_resume):
        raise UserError("--eval evaluates a prompt-tuning checkpoint: give --resume FILE or --auto-resume")
    if args.data_set == "IMNET" and not Path(args.data_path).is_dir():
        raise UserError(f"--data-path {args.data_path} does not exist")
    check_start_epoch(args, args.epochs, f"--epochs is {args.epochs}")
    check_model_kwargs(args.model_kwargs, {"img_size": ("--input-size", args.input_size)})


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_recipe(parser, args, _build, check_args, dist_url=args.dist_url)


def _build(args: argparse.Namespace, dist: DistInfo, token_select, output_dir: Path | None, say: Say) -> Recipe:
    datasets, num_classes = _datasets(args)
    model = _model(args, num_classes, token_select, say)

    world_batch = args.batch_size * dist.world_size * args.accum_iter
    if not args.unscale_lr:
        args.lr = args.lr * world_batch / 256.0
    run = build_run(
        args,
        model,
        datasets,
        BaseLoss(classification_loss(False, args.smoothing, False)),
        dist,
        output_dir=output_dir,
        lr_schedule=vpt_schedule(args),
        amp=not args.no_amp,
        num_workers=args.num_workers,
        eval_batch_size=args.batch_size,
        dist_eval=args.dist_eval,
        epochs=args.epochs,
        accum_steps=args.accum_iter,
        extra_log={"vpt": args.vpt, "prompt_tokens": args.prompt_tokens},
    )

    def needs_a_backbone(found: FoundCheckpoint | None) -> None:
        if found is None and not args.finetune:
            raise UserError(
                f"--auto-resume found no checkpoint in {output_dir}: a fresh start needs the backbone from --finetune"
            )

    def eval_report(metrics: dict) -> list[str]:
        return [
            f"Accuracy of the network on the {len(cast(Sized, datasets[1]))} test images: "
            f"{metrics['test_acc1']:.2f}% (top-5 {metrics['test_acc5']:.2f}%, loss {metrics['test_loss']:.4f})"
        ]

    def header() -> str:
        total = sum(p.numel() for p in model.parameters())
        return (
            f"{args.model} + VPT-{args.vpt} ({args.prompt_tokens} prompt tokens): {n_parameters(model) / 1e6:.3f}M of "
            f"{total / 1e6:.2f}M parameters train, {num_classes} classes, "
            f"{len(cast(Sized, datasets[0]))} training images, {dist.world_size} process(es) on {dist.device}, "
            f"{run.parts.precision.name}, lr {args.lr:.2e} at total batch {world_batch}"
        )

    return Recipe(run, header, eval_report, after_resume=needs_a_backbone)


def vpt_schedule(args: argparse.Namespace):
    """VPT's schedule: epoch e of E trains at lr * e / W during the W warm-up epochs (from --warmup-lr), then at
    lr * (1 + cos(pi * (e - W) / (E - W))) / 2 (down to --min-lr): timm's schedule of --sched with the warm-up
    before its E - W epochs, stepped with the next epoch (timm's train.py), one value per epoch."""

    def build(optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> LRSchedule:
        kwargs = scheduler_kwargs(args) | {"num_epochs": args.epochs - args.warmup_epochs, "warmup_prefix": True}
        scheduler, epochs = create_scheduler_v2(optimizer, **kwargs)
        return LRSchedule(scheduler, epoch_offset=1, epochs=epochs)

    return build


def build_transforms(input_size: int, kind: str) -> tuple[T.Compose, T.Compose]:
    """(train, eval) transforms of VPT: ``vtab`` resizes to input_size x input_size and normalises; ``fgvc``
    resizes the short side to 8/7 of the input (256 for 224) and crops randomly with a flip (train) or in the
    centre (eval). ImageNet mean and std, as VPT uses for every backbone."""
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    if kind == "vtab":
        resize = T.Resize((input_size, input_size), interpolation=T.InterpolationMode.BILINEAR)
        return T.Compose([resize, *normalize]), T.Compose([resize, *normalize])
    larger = T.Resize(input_size * 8 // 7, interpolation=T.InterpolationMode.BILINEAR)
    train = T.Compose([larger, T.RandomCrop(input_size), T.RandomHorizontalFlip(), *normalize])
    return train, T.Compose([larger, T.CenterCrop(input_size), *normalize])


def _datasets(args: argparse.Namespace) -> tuple[tuple[Dataset, Dataset], int]:
    """(train, val) with VPT's transforms, and the class count."""
    train_transform, eval_transform = build_transforms(args.input_size, args.transform)
    if args.data_set != "IMNET":
        train_set, num_classes = build_dataset(args.data_set, args.data_path, True, train_transform, args.download)
        val_set, _ = build_dataset(args.data_set, args.data_path, False, eval_transform, args.download)
        return (train_set, val_set), num_classes
    root = Path(args.data_path)
    train_set, num_classes = image_folder(root / args.train_split, train_transform, allow_empty_classes=True)
    val_set, _ = image_folder(root / args.val_split, eval_transform, allow_empty_classes=True)
    check_same_classes(train_set, val_set, str(root / args.train_split), str(root / args.val_split))
    return (train_set, val_set), num_classes


def _model(args: argparse.Namespace, num_classes: int, token_select, say) -> torch.nn.Module:
    """The timm ViT without dropout or drop path, prompts applied and everything else frozen, the backbone
    loaded from --finetune, ToE attached."""
    with torch.device("meta"):  # the kind of model, before its flags are applied
        kind = type(create_model(args.model, num_classes))
    if not issubclass(kind, VisionTransformer):
        raise UserError(
            f"--vpt cannot prompt --model {args.model}: it needs a timm VisionTransformer, not {kind.__name__}"
        )
    torch.manual_seed(args.seed)  # identical initial prompts and head on every process
    kwargs = {"img_size": args.input_size, "drop_rate": 0.0, "drop_path_rate": 0.0}
    model = create_model(args.model, num_classes, **kwargs, **parse_model_kwargs(args.model_kwargs))
    check_input_size(model, args.input_size)
    try:
        apply_vpt(model, args.prompt_tokens, deep=args.vpt == "deep", dropout=args.prompt_dropout)
    except (TypeError, ValueError) as error:
        raise UserError(f"--vpt cannot prompt --model {args.model}: {error}") from None
    if args.finetune:
        say(
            load_finetune_weights(
                model,
                args.finetune,
                frozen=lambda name: not name.startswith(("vpt.", *HEAD_PREFIXES)),
                fresh_head=lambda state: not any(name.startswith("vpt.") for name in state),  # a backbone's head
            )
        )
    return attach_toe(model, token_select, args.model)


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
