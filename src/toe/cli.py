"""The ``toe`` command: ``toe flops`` (analytic cost of a schedule), ``toe report`` (a run's summary),
``toe plot`` (training curves of runs), ``toe visualize`` (ToE's token selection over images) and
``toe bench`` (training-step throughput of every ToE stage)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import cast

from .errors import UserError
from .flag_types import above_zero, count, positive
from .options import ArgumentParser, add_toe_arguments, flag_names, run_main, token_select_from_args
from .schedule import REDUCTIONS
from .token_select import TokenSelect


def _build_flops_model(args: argparse.Namespace):
    """The model to measure, built on the meta device (no memory, no weights, no network), with ToE attached
    (which checks that ToE can work with it and that the schedule keeps tokens of its patches)."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from . import models  # noqa: F401  (LV-ViT registered before the timm.is_model check)
    from .integration import apply_toe
    from .models.factory import check_input_size, create_model, parse_model_kwargs

    model: torch.nn.Module
    with torch.device("meta"):
        if args.embed_dim is not None:
            if args.model_kwargs:
                raise UserError("--model-kwargs applies to --model, not to the plain ViT of --embed-dim")
            name = f"ViT width {args.embed_dim} depth {args.depth}"
            try:
                model = VisionTransformer(
                    img_size=args.input_size or 224,
                    patch_size=args.patch_size or 16,
                    embed_dim=args.embed_dim,
                    depth=args.depth,
                    num_heads=max(1, args.embed_dim // 64),
                    mlp_ratio=args.mlp_ratio,
                    num_classes=args.num_classes,
                )
            except (AssertionError, ValueError, RuntimeError) as error:
                raise UserError(f"--embed-dim {args.embed_dim}: no ViT of this shape ({error})") from None
        else:
            kwargs = {"img_size": args.input_size, "patch_size": args.patch_size}
            kwargs = {k: v for k, v in kwargs.items() if v is not None} | parse_model_kwargs(args.model_kwargs)
            name, model = args.model, create_model(args.model, args.num_classes, **kwargs)
    if args.input_size is not None:
        check_input_size(model, args.input_size)
    subject = f"--model {args.model}" if args.embed_dim is None else f"the ViT of --embed-dim {args.embed_dim}"
    try:
        apply_toe(model, token_select_from_args(args))
    except (TypeError, ValueError) as error:
        raise UserError(f"{subject} cannot train with ToE: {flag_names(str(error))}") from None
    return name, model


def _yolos_flops(args: argparse.Namespace):
    """Name, :class:`toe.flops.ViTShape` and ToE schedule of a YOLOS detector on the ``--yolos`` DeiT backbone
    (its shape changed by ``--patch-size`` and ``--model-kwargs``) with ``--det-token-num`` [DET] tokens at
    ``--input-size`` H W, built on the meta device; ToE flags left out take YOLOS's paper settings."""
    import torch

    from .detection.model import BACKBONES, YOLOS, create_backbone
    from .flops import yolos_shape
    from .models.factory import parse_model_kwargs

    if args.yolos not in BACKBONES:
        raise UserError(f"--yolos must be one of {', '.join(BACKBONES)}, got {args.yolos}")
    if args.embed_dim is not None:
        raise UserError("--embed-dim describes a plain ViT; give the --yolos backbone's shape with --model-kwargs")
    size = args.input_size or [800, 1333]
    if len(size) > 2 or min(size) < 1:
        raise UserError(f"--input-size takes one or two positive sizes in pixels (H W), got {' '.join(map(str, size))}")
    height, width = size[0], size[-1]
    kwargs = ({"patch_size": args.patch_size} if args.patch_size else {}) | parse_model_kwargs(args.model_kwargs)
    args.toe_recipe = "yolos"
    with torch.device("meta"):
        try:
            backbone = create_backbone(args.yolos, **kwargs)
        except (TypeError, ValueError, AssertionError) as error:
            raise UserError(f"--yolos {args.yolos} cannot be built with these flags: {error}") from None
        patch = backbone.patch_embed.patch_size
        if height < patch[0] or width < patch[1]:
            raise UserError(f"--input-size {height} {width} is smaller than one {patch[0]} px patch")
        model = YOLOS(backbone, args.num_classes, args.det_token_num, (height, width))
    shape = yolos_shape(model, height, width)
    selector = cast(TokenSelect, token_select_from_args(args))  # ToE always on (toe flops): never None
    try:
        selector.token_counts(shape.num_patches)
    except ValueError as error:
        raise UserError(
            f"--yolos {args.yolos} at {height} x {width} px cannot train with ToE: {flag_names(str(error))}"
        ) from None
    return f"YOLOS-{args.yolos} at {height} x {width} px", shape, selector.schedule


def flops_main(args: argparse.Namespace) -> None:
    from .flops import format_costs, schedule_costs, vit_shape

    if args.num_classes is None:
        args.num_classes = 1000 if args.yolos is None else 91  # ImageNet; COCO's category ids
    if args.yolos is not None:
        name, shape, schedule = _yolos_flops(args)
    else:
        if args.input_size is not None and len(args.input_size) != 1:
            raise UserError("--input-size takes one size for a classifier (two, H W, only with --yolos)")
        args.input_size = args.input_size[0] if args.input_size else None
        name, model = _build_flops_model(args)
        shape, schedule = vit_shape(model), model.token_select.schedule
    print(format_costs(name, shape, schedule_costs(shape, schedule, args.epochs)))
    if warning := schedule.unreached_warning(args.epochs):
        print(flag_names(warning))
    print(
        f"token reduction {REDUCTIONS[args.token_reduction]}: every variant keeps the same tokens, "
        "so the counts above hold for all of them"
    )


def report_main(args: argparse.Namespace) -> None:
    from .report import format_report, format_side_by_side

    if args.side_by_side:
        print(format_side_by_side(args.output_dirs))
        return
    for i, folder in enumerate(args.output_dirs):
        print(("\n" if i else "") + format_report(folder))


def plot_main(args: argparse.Namespace) -> None:
    from .plot import plot_main as run

    run(args)


def visualize_main(args: argparse.Namespace) -> None:
    from .visualize import visualize_main as run

    run(args)


def bench_main(args: argparse.Namespace) -> None:
    from .bench import bench_main as run

    run(args)


def _add_bench_parser(commands) -> None:
    from .bench import add_bench_arguments

    bench = commands.add_parser(
        "bench",
        help="training-step images/s of every ToE stage against full-token training, next to the analytic ratio",
        description="Time forward + backward + AdamW steps on synthetic images (data loading excluded) of a timm "
        "ViT: plain timm, ToE attached but off, and every ToE stage, in interleaved rounds; print images/s, the "
        "measured and analytic (toe flops) speedup over plain timm and TokenSelect's share of a step.",
    )
    add_bench_arguments(bench)
    add_toe_arguments(bench, "deit", always_on=True)
    bench.set_defaults(handler=bench_main)


def _add_visualize_parser(commands) -> None:
    visualize = commands.add_parser(
        "visualize",
        help="picture of the tokens ToE keeps and merges in each stage, over images",
        description="Draw, for every image (rows) and stage (columns), the seeds, the tokens each expansion "
        "sub-step adds and the kept token every merged patch is averaged into, as TokenSelect selects them "
        "on the model's block-0 output; write one PNG. ToE flags left out take the checkpoint's values "
        "(else the paper's DeiT settings).",
    )
    visualize.add_argument(
        "--checkpoint",
        default=None,
        help="a checkpoint of a recipe run, ours or upstream's (default: a fresh model); weights-only files "
        "(e.g. TokenLabeling's released weights) with --model",
    )
    visualize.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    visualize.add_argument("--image", action="extend", nargs="+", default=[], metavar="FILE", help="image file(s)")
    visualize.add_argument("--data-path", default=None, help="take images from this dataset folder (val/ first)")
    visualize.add_argument("--num-images", type=positive, default=4, help="images taken from --data-path (default 4)")
    visualize.add_argument(
        "--stage", action="extend", nargs="+", type=int, default=[], metavar="S", help="stage(s) to draw (default: all)"
    )
    visualize.add_argument(
        "--out", default=None, help="PNG to write (default: toe_selection.png beside the checkpoint)"
    )
    model = visualize.add_argument_group("the model (a fresh one, or the one of a weights-only --checkpoint)")
    model.add_argument("--model", default=None, help="timm model name (default deit_small_patch16_224)")
    model.add_argument("--input-size", type=positive, default=None, help="image size (default: the model's)")
    model.add_argument("--patch-size", type=positive, default=None, help="patch size (default: the model's)")
    model.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="more timm.create_model args")
    model.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    add_toe_arguments(visualize, "deit", always_on=True)
    visualize.set_defaults(handler=visualize_main, distance=None, seeding=None, token_reduction=None)


def _add_plot_parser(commands) -> None:
    plot = commands.add_parser(
        "plot",
        help="training curves of one or more runs (top-1, loss, lr, tokens, compute time), overlaid, to a PNG",
        description="Plot top-1 (model and EMA), train loss, learning rate, tokens fed to blocks 1.. and "
        "cumulative train compute time against epochs, from the runs' log.txt, overlaid in one PNG.",
    )
    plot.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR", help="a run's --output_dir")
    plot.add_argument("--out", default=None, help="PNG to write (default: training_curves.png in the first OUTPUT_DIR)")
    plot.set_defaults(handler=plot_main)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="toe", description="Token Expansion (ToE) tools.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    flops = commands.add_parser(
        "flops",
        help="analytic forward cost of each ToE stage and the speedup of a whole schedule",
        description="Print forward GFLOPs per image of each ToE stage and the whole schedule's speedup. "
        "Give a timm model name (with --input-size, --patch-size, --model-kwargs), or --embed-dim/--depth/"
        "--patch-size for a plain ViT, or --yolos for a YOLOS detector (its [DET] tokens are never reduced).",
    )
    flops.add_argument("--model", default="deit_small_patch16_224", help="timm model name")
    flops.add_argument(
        "--input-size",
        type=positive,
        nargs="+",
        default=None,
        metavar="SIZE",
        help="image size (default: the model's); with --yolos H W in pixels (default 800 1333)",
    )
    flops.add_argument(
        "--yolos",
        default=None,
        metavar="BACKBONE",
        help="a YOLOS detector on this --backbone_name (tiny, small, base, small_dWr) instead of --model, its "
        "shape changed by --patch-size and --model-kwargs; ToE flags left out take the paper's YOLOS-Ti "
        "settings (stages at epochs 5 100 200)",
    )
    flops.add_argument("--det-token-num", type=positive, default=100, help="YOLOS [DET] tokens (with --yolos)")
    flops.add_argument(
        "--patch-size", type=positive, default=None, help="patch size (default: the model's; 16 for a plain ViT)"
    )
    flops.add_argument(
        "--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="more timm.create_model args, e.g. depth=6"
    )
    flops.add_argument("--embed-dim", type=positive, default=None, help="plain ViT width (instead of --model)")
    flops.add_argument("--depth", type=positive, default=12, help="plain ViT depth (with --embed-dim)")
    flops.add_argument("--mlp-ratio", type=above_zero, default=4.0, help="plain ViT MLP ratio (with --embed-dim)")
    flops.add_argument("--num-classes", type=count, default=None, help="classes (default 1000; with --yolos 91)")
    flops.add_argument("--epochs", type=positive, default=300)
    add_toe_arguments(flops, "deit", always_on=True)
    flops.set_defaults(handler=flops_main)

    report = commands.add_parser(
        "report",
        help="summary of a training run: stages, tokens, time per epoch, measured speedup, top-1",
        description="Summarise training runs from their log.txt.",
    )
    report.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR", help="a run's --output_dir")
    report.add_argument(
        "--side-by-side",
        action="store_true",
        help="one line per run: top-1, train compute time and its speedup over the first run, training memory",
    )
    report.set_defaults(handler=report_main)
    _add_plot_parser(commands)
    _add_visualize_parser(commands)
    _add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


def entry_point() -> None:
    """Console-script entry point."""
    run_main(main)


if __name__ == "__main__":
    entry_point()
