"""The YOLOS recipe (hustvl/YOLOS main.py flags) with Token Expansion, on the shared engine.

    python ToE/YOLOS/main.py --coco_path /coco --backbone_name tiny --pre_trained deit_tiny.pth \\
        --init_pe_size 800 1333 --eval_size 512 --output_dir out --toe
    torchrun --nproc_per_node=8 ToE/YOLOS/main.py ... (see ToE/YOLOS/run/)

Without the ToE flags this is plain YOLOS training (the baseline).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..detection.backbone import load_backbone_weights
from ..detection.coco import build_coco_split, collate_detection, num_classes_of
from ..detection.criterion import SetCriterion
from ..detection.evaluation import DetectionEvaluation
from ..detection.figure import predictions_figure
from ..detection.matcher import HungarianMatcher
from ..detection.model import BACKBONES, POS_EMBED_INITS, YOLOS, create_backbone
from ..detection.transforms import eval_transforms, single_scale_train_transforms, train_transforms
from ..engine import DistInfo, LRSchedule, evaluate_run, find_checkpoint, load_weights
from ..errors import UserError, state_dict_mismatch
from ..figures import check_output, save_figure
from ..flag_types import above_zero, count, non_negative, positive
from ..flag_types import device as device_name
from ..models.factory import parse_model_kwargs
from ..options import (
    ArgumentParser,
    add_toe_arguments,
    flag_names,
    may_change_on_resume,
    run_main,
)
from ..token_select import TokenSelect
from .build import build_run, n_parameters
from .flags import add_engine_arguments, check_start_epoch
from .skeleton import Recipe, Resume, Say, run_recipe

SCHEDULES = ("warmupcos", "step")


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="ToE/YOLOS/main.py",
        description="YOLOS object detection training and evaluation with Token Expansion (ToE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--lr", default=1e-4, type=non_negative, help="learning rate of the backbone and the heads")
    p.add_argument(
        "--lr_backbone", default=1e-5, type=non_negative, help="accepted for compatibility: unused, as upstream"
    )
    p.add_argument("--batch_size", default=2, type=positive, help="batch size per process")
    p.add_argument("--weight_decay", default=1e-4, type=non_negative)
    p.add_argument("--epochs", default=150, type=positive)
    p.add_argument("--eval_size", default=800, type=positive, help="shorter side of the evaluation images")
    p.add_argument("--clip_max_norm", default=0.1, type=non_negative, help="gradient clipping max norm (0: off)")
    p.add_argument("--use_checkpoint", action="store_true", help="recompute the blocks in backward (less memory)")

    g = p.add_argument_group("learning-rate schedule")
    g.add_argument("--sched", default="warmupcos", choices=SCHEDULES, help="cosine with warm-up, or step")
    g.add_argument("--lr_drop", default=100, type=positive, help="step schedule: epochs between x0.1 drops")
    g.add_argument("--warmup-lr", type=non_negative, default=1e-6)
    g.add_argument("--min-lr", type=non_negative, default=1e-7)
    g.add_argument("--warmup-epochs", type=int, default=0)
    g.add_argument("--decay-rate", "--dr", type=non_negative, default=0.1, help="cosine: decay per cycle (one cycle)")

    g = p.add_argument_group("model")
    g.add_argument("--det_token_num", default=100, type=positive, help="number of [DET] tokens")
    g.add_argument("--backbone_name", default="tiny", choices=list(BACKBONES), help="DeiT backbone")
    g.add_argument("--pre_trained", default="", help="ImageNet weights of the backbone (DeiT/timm file)")
    g.add_argument(
        "--init_pe_size",
        nargs="+",
        type=int,
        default=None,
        metavar="H W",
        help="position embedding grid in pixels (default 800 1344)",
    )
    g.add_argument(
        "--mid_pe_size",
        nargs="+",
        type=int,
        default=None,
        metavar="H W",
        help="mid position embeddings' grid (default: none)",
    )
    g.add_argument(
        "--pos_embed_init",
        default="pretrained",
        choices=POS_EMBED_INITS,
        help="start of the patch position embedding: the backbone's, interpolated to --init_pe_size "
        "(default, upstream), or a 2-D sine-cosine one of that grid, for a backbone whose position "
        "embedding learned no layout (the demo's; not upstream)",
    )

    g = p.add_argument_group("matcher and loss")
    g.add_argument("--set_cost_class", default=1, type=non_negative, help="class weight in the matching cost")
    g.add_argument("--set_cost_bbox", default=5, type=non_negative, help="L1 box weight in the matching cost")
    g.add_argument("--set_cost_giou", default=2, type=non_negative, help="GIoU weight in the matching cost")
    g.add_argument("--dice_loss_coef", default=1, type=float, help="accepted for compatibility: unused (no masks)")
    g.add_argument("--bbox_loss_coef", default=5, type=non_negative)
    g.add_argument("--giou_loss_coef", default=2, type=non_negative)
    g.add_argument("--eos_coef", default=0.1, type=non_negative, help="relative weight of the no-object class")

    g = p.add_argument_group("data and run")
    g.add_argument("--dataset_file", default="coco", choices=["coco"], help="only COCO-layout data")
    may_change_on_resume(
        g.add_argument("--coco_path", type=str, default=None, help="COCO-layout folder (see datasets/README.md)")
    )
    g.add_argument(
        "--aug-scale",
        type=above_zero,
        default=1.0,
        help="multiply every pixel size of the training augmentation (scales, crop sizes) by this, for small images",
    )
    g.add_argument(
        "--single-scale",
        action="store_true",
        help="train at --eval_size (random horizontal flip only), not with DETR's multi-scale resize and crop: "
        "for tiny data, where the padding of mixed sizes in a batch hides where each image ends (not upstream)",
    )
    may_change_on_resume(
        g.add_argument("--output_dir", default="", help="where to save checkpoints and logs (nothing saved if empty)")
    )
    may_change_on_resume(
        g.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    )
    g.add_argument("--seed", default=42, type=int)
    may_change_on_resume(g.add_argument("--resume", default="", help="checkpoint to resume from"))
    may_change_on_resume(g.add_argument("--start_epoch", default=0, type=int, help="first epoch when not resuming"))
    may_change_on_resume(g.add_argument("--eval", action="store_true", help="evaluation only"))
    g.add_argument(
        "--predictions-figure",
        default=None,
        metavar="PNG",
        help="with --eval: also draw the predictions (score >= 0.5) on the first 6 validation images into PNG",
    )
    may_change_on_resume(g.add_argument("--num_workers", default=2, type=count))
    may_change_on_resume(g.add_argument("--world_size", default=1, type=int, help="set by torchrun (WORLD_SIZE)"))
    may_change_on_resume(g.add_argument("--dist_url", default="env://", help="distributed rendezvous"))

    add_engine_arguments(p)
    may_change_on_resume(
        p.add_argument(
            "--amp",
            action="store_true",
            help="mixed precision (fp16 with a gradient scaler on CUDA; --amp-dtype bf16 for bf16); off by default: "
            "upstream YOLOS trains in fp32",
        )
    )
    add_toe_arguments(p, "yolos")
    p.set_defaults(pin_mem=True)  # the shared run builder reads it; upstream YOLOS pins memory
    return p


def uses_amp(args: argparse.Namespace) -> bool:
    """Mixed precision only when asked for (``--amp``, ``--apex-amp`` or an ``--amp-dtype`` of fp16 / bf16):
    upstream YOLOS trains in fp32. ``--no-amp`` wins."""
    asked = args.amp or args.apex_amp or args.amp_dtype in ("fp16", "bf16")
    return asked and not args.no_amp


def pe_size(values: list[int] | None, flag: str, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """``--init_pe_size`` / ``--mid_pe_size``: H W (one value means a square)."""
    if values is None:
        return default
    if len(values) not in (1, 2) or min(values) < 1:
        raise UserError(f"{flag} takes one or two positive sizes in pixels (H W), got {' '.join(map(str, values))}")
    return (values[0], values[-1])


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations that make no sense, caught before any work."""
    if args.single_scale and args.aug_scale != 1.0:
        raise UserError("--aug-scale scales the multi-scale augmentation, which --single-scale turns off: give one")
    if not args.coco_path:
        raise UserError("--coco_path is required: a COCO-layout folder (train2017/, val2017/, annotations/)")
    if not Path(args.coco_path).is_dir():
        raise UserError(f"--coco_path {args.coco_path} does not exist")
    check_start_epoch(args, args.epochs, f"--epochs is {args.epochs}")
    if args.predictions_figure:
        if not args.eval:
            raise UserError("--predictions-figure draws an evaluation's predictions: add --eval")
        check_output(Path(args.predictions_figure), "--predictions-figure")
    args.init_pe_size = pe_size(args.init_pe_size, "--init_pe_size", (800, 1344))
    args.mid_pe_size = pe_size(args.mid_pe_size, "--mid_pe_size", None)
    args.clip_grad = args.clip_max_norm or None  # the engine's name; 0 turns clipping off, as upstream


def build_model(
    args: argparse.Namespace, num_classes: int, token_select: TokenSelect | None
) -> tuple[YOLOS, str | None]:
    """The detector the flags describe (backbone weights from ``--pre_trained``, ToE attached); returns
    it and the backbone loader's report (None without ``--pre_trained``)."""
    kwargs = parse_model_kwargs(args.model_kwargs)
    try:
        backbone = create_backbone(args.backbone_name, **kwargs)
    except (TypeError, AssertionError, ValueError) as error:
        given = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise UserError(f"--backbone_name {args.backbone_name} cannot be built with {given}: {error}") from None
    report = load_backbone_weights(backbone, args.pre_trained) if args.pre_trained else None
    patch = backbone.patch_embed.patch_size
    for flag, size in (("--init_pe_size", args.init_pe_size), ("--mid_pe_size", args.mid_pe_size)):
        if size is not None and (size[0] < patch[0] or size[1] < patch[1]):
            raise UserError(f"{flag} {size[0]} {size[1]} is smaller than one {patch[0]} px patch")
    try:
        model = YOLOS(
            backbone,
            num_classes,
            args.det_token_num,
            args.init_pe_size,
            args.mid_pe_size,
            args.use_checkpoint,
            args.pos_embed_init,
        )
    except ValueError as error:
        raise UserError(f"--backbone_name {args.backbone_name}: {flag_names(str(error))}") from None
    model.token_select = token_select
    return model, report


def build_datasets(args: argparse.Namespace, patch_size: int, train: bool = True):
    """(train set or None, val set) of ``--coco_path`` with YOLOS's transforms, and the class count K."""
    val_set = build_coco_split(args.coco_path, "val", eval_transforms(args.eval_size, patch_size))
    train_set = None
    if train:
        if args.single_scale:
            transforms = single_scale_train_transforms(args.eval_size, patch_size)
        else:
            transforms = train_transforms(args.backbone_name, patch_size, args.aug_scale)
        train_set = build_coco_split(args.coco_path, "train", transforms)
    num_classes = num_classes_of(train_set.coco if train_set is not None else val_set.coco)
    return train_set, val_set, num_classes


def build_criterion(args: argparse.Namespace, num_classes: int) -> SetCriterion:
    """DETR's set criterion from the matcher and loss flags."""
    try:
        matcher = HungarianMatcher(args.set_cost_class, args.set_cost_bbox, args.set_cost_giou)
    except ValueError:
        raise UserError("--set_cost_class, --set_cost_bbox and --set_cost_giou cannot all be 0") from None
    return SetCriterion(num_classes, matcher, args.eos_coef, 1.0, args.bbox_loss_coef, args.giou_loss_coef)


class DetectionLoss(nn.Module):
    """The engine's loss: ``loss(images, outputs, targets)`` -> the set criterion's weighted total."""

    def __init__(self, criterion: SetCriterion) -> None:
        super().__init__()
        self.criterion = criterion

    def forward(self, images: torch.Tensor, outputs: dict, targets: list[dict]) -> torch.Tensor:
        return self.criterion(outputs, targets)["loss"]


def build_optimizer(model: YOLOS, args: argparse.Namespace) -> torch.optim.AdamW:
    """Upstream YOLOS's optimizer: AdamW at ``--lr`` on :func:`param_groups` with ``--weight_decay``."""
    return torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, weight_decay=args.weight_decay)


def param_groups(model: YOLOS, weight_decay: float) -> list[dict]:
    """Upstream YOLOS's AdamW groups: the heads with weight decay on every parameter; the backbone's
    biases, norms, position embeddings, class and [DET] tokens without; the rest of the backbone with."""
    skip = model.no_weight_decay()
    heads, decay, no_decay = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if not name.startswith("backbone."):
            heads.append(parameter)
        elif parameter.ndim == 1 or name.endswith(".bias") or name in skip:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [
        {"params": heads, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def build_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer):
    """Upstream's schedules with timm: ``warmupcos`` = one cosine cycle over ``--epochs`` after
    ``--warmup-epochs`` from ``--warmup-lr`` down to ``--min-lr``; ``step`` = x0.1 every ``--lr_drop``
    epochs. Both are stepped with the finished epoch, as upstream."""
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    if args.sched == "step":
        return StepLRScheduler(optimizer, decay_t=args.lr_drop, decay_rate=0.1)
    return CosineLRScheduler(
        optimizer,
        t_initial=args.epochs,
        lr_min=args.min_lr,
        cycle_decay=args.decay_rate,
        warmup_t=args.warmup_epochs,
        warmup_lr_init=args.warmup_lr,
        cycle_limit=1,
    )


def main(argv: Sequence[str] | None = None) -> dict | None:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_recipe(parser, args, _build, check_args, dist_url=args.dist_url)


def _build(args: argparse.Namespace, dist: DistInfo, token_select, output_dir: Path | None, say: Say) -> Recipe:
    torch.manual_seed(args.seed)  # identical initial weights on every process
    patch = parse_model_kwargs(args.model_kwargs).get("patch_size", 16)  # every --backbone_name: 16 px
    train_set, val_set, num_classes = build_datasets(args, patch)
    model, report = build_model(args, num_classes, token_select)
    if report:
        say(report)
    criterion = build_criterion(args, num_classes)
    run = build_run(
        args,
        model,
        (train_set, val_set),
        DetectionLoss(criterion),
        dist,
        output_dir=output_dir,
        lr_schedule=lambda optimizer, _: LRSchedule(build_scheduler(args, optimizer)),
        amp=uses_amp(args),
        num_workers=args.num_workers,
        eval_batch_size=args.batch_size,
        dist_eval=True,  # upstream evaluates a shard per process
        epochs=args.epochs,
        evaluation=DetectionEvaluation(val_set.coco, criterion),
        collate_fn=collate_detection,
        optimizer=lambda m: build_optimizer(cast(YOLOS, m), args),  # build_run calls it with the model above
    )

    def evaluate(resume: Resume) -> dict:
        """--resume FILE: its weights as they are (ours or upstream YOLOS's); --auto-resume: the run folder's
        checkpoint, resumed with its checks."""
        if args.resume:
            say(load_detector_weights(model, args.resume))
        else:
            found = find_checkpoint(None, args.auto_resume, output_dir, clean=dist.is_main)
            if found is None:
                raise UserError(
                    "--eval needs weights to evaluate: --resume FILE, or --auto-resume with a checkpoint in "
                    "--output_dir"
                )
            if message := resume(found):
                say(message)
        metrics = evaluate_run(run)
        say(
            f"COCO box AP on the {len(val_set)} validation images: {metrics['test_ap']:.1f} "
            f"(AP50 {metrics['test_ap50']:.1f}, AP75 {metrics['test_ap75']:.1f}, loss {metrics['test_loss']:.4f})"
        )
        if args.predictions_figure and dist.is_main:
            written = save_figure(
                predictions_figure(model, val_set), Path(args.predictions_figure), "--predictions-figure"
            )
            say(f"wrote {written}: predictions on {min(6, len(val_set))} validation images")
        return metrics

    def header() -> str:
        return (
            f"YOLOS-{args.backbone_name}: {n_parameters(model) / 1e6:.2f}M parameters, {args.det_token_num} [DET] "
            f"tokens, {num_classes - 1} classes + no object, {len(train_set)} training images, {dist.world_size} "
            f"process(es) on {dist.device}, {run.parts.precision.name}, lr {args.lr:.2e} at total batch "
            f"{args.batch_size * dist.world_size}"
        )

    # evaluate() prints its own lines (the figure's after the metrics)
    return Recipe(run, header, lambda metrics: [], evaluate=evaluate)


def load_detector_weights(model: YOLOS, path: str, flag: str = "--resume") -> str:
    """Load a detector's weights for ``--eval``: a checkpoint of this recipe or of upstream YOLOS (same
    parameter names); returns a one-line report."""
    try:
        model.load_state_dict(load_weights(path, flag))
    except RuntimeError as error:
        raise UserError(
            f"{flag} {path} does not fit the detector of these flags (--backbone_name, --det_token_num, "
            f"--init_pe_size, --mid_pe_size, --model-kwargs): {state_dict_mismatch(error)}"
        ) from None
    return f"evaluating the weights of {path}"


def cli() -> None:
    run_main(main)
