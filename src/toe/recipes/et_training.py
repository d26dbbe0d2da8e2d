"""EfficientTrain's five-stage curriculum driver (ET_training.py), with ToE for DeiT-Tiny/Small.

    python ToE/EfficientTrain/ET_training.py --model deit_small_patch16_224 --data_path /imagenet \\
        --output_dir out --final_bs 256 --epochs 300 --num_gpus 8

Stage i (1..5) trains epochs [epochs/5 * (i-1), epochs/5 * i) of one run at 160/160/160/192/224 px
(5/7, 5/7, 5/7, 6/7, 7/7 of --input_size) with RandAugment magnitude 1/3/5/7/9, 2 x --final_bs images per
process below the final size and --final_bs at it, and gradient accumulation up to --effective_bs images
per update. Each stage resumes from the previous stage's last checkpoint (position embedding and its
optimizer moments resampled to the new grid); a stage that runs out of GPU memory is retried once with
half the batch and twice the accumulation.

The stages run one after another in this process (in every process under torchrun), each built exactly
as ``ToE/EfficientTrain/main.py`` would build it from its flags; see docs/efficienttrain.md for why.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Sequence

import torch

from ..engine import RunLogger, init_distributed
from ..engine.distributed import DistInfo, barrier, cleanup
from ..errors import OutOfMemory, UserError
from ..flag_types import positive
from ..options import ArgumentParser, flag_names, run_main, schedule_from_args, toe_enabled
from . import efficienttrain
from .efficienttrain_plan import NUM_STAGES, Stage, format_plan, plan_stages, stage_input_sizes
from .flags import check_even_batch

# models the ToE paper trained with EfficientTrain: ToE with its settings, AMP and clipping appended
TOE_MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224")
TOE_MODEL_DEFAULTS = {"use_amp": True, "clip_grad": 5.0}
# upstream ET_training.py's drop path rate per model (those of the original papers), for the timm models of its
# table; other models keep main.py's default (0)
DROP_PATH = {
    "resnet50": 0.0,
    "convnext_tiny": 0.1,
    "convnext_small": 0.4,
    "convnext_base": 0.5,
    "deit_tiny_patch16_224": 0.1,
    "deit_small_patch16_224": 0.1,
}


def build_parser() -> ArgumentParser:
    p = efficienttrain.build_parser(prog="ToE/EfficientTrain/ET_training.py", stage=False)
    g = p.add_argument_group("EfficientTrain curriculum")
    g.add_argument("--input_size", default=224, type=int, help="final input size (the last stage's)")
    g.add_argument(
        "--input_sizes",
        type=int,
        nargs=NUM_STAGES,
        default=None,
        metavar="SIZE",
        help="the five stage sizes (default: 5/7, 5/7, 5/7, 6/7, 7/7 of --input_size, rounded to the patch size)",
    )
    g.add_argument("--final_bs", type=positive, default=256, help="batch per process at the final size (2x below it)")
    g.add_argument("--effective_bs", type=positive, default=4096, help="images per optimizer update (by accumulation)")
    g.add_argument(
        "--num_gpus",
        type=positive,
        default=None,
        help="processes; more than 1 without torchrun restarts this command under torchrun (default: torchrun's)",
    )
    g.add_argument(
        "--no-toe",
        action="store_true",
        help=f"train {' / '.join(TOE_MODELS)} without ToE (for them ToE is on by default)",
    )
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Flags with the model's defaults unless given otherwise: upstream's drop path rate (:data:`DROP_PATH`) and
    for the ToE models ToE, --use_amp true and --clip_grad 5.0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = dict(TOE_MODEL_DEFAULTS) if args.model in TOE_MODELS else {}
    if args.model in DROP_PATH:
        defaults["drop_path"] = DROP_PATH[args.model]
    if defaults:
        parser.set_defaults(**defaults)
        args = parser.parse_args(argv)
    if args.no_toe:
        if toe_enabled(args):
            raise UserError("--no-toe cannot be combined with --toe or the ToE schedule flags")
    elif args.model in TOE_MODELS:
        args.toe = True
    return args


def check_args(args: argparse.Namespace) -> None:
    efficienttrain.check_args(args)
    if not args.output_dir:
        raise UserError("--output_dir is required: each stage resumes from the checkpoint the previous one left there")
    if args.input_sizes is not None and args.input_sizes[-1] != args.input_size:
        raise UserError(
            f"--input_sizes must end with the final --input_size {args.input_size}, got "
            f"{' '.join(map(str, args.input_sizes))}"
        )
    check_even_batch(args, args.final_bs, "--final_bs")


def main(argv: Sequence[str] | None = None) -> list[dict | None] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    check_args(args)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if args.num_gpus is not None and args.num_gpus > 1 and "WORLD_SIZE" not in os.environ:
        relaunch_under_torchrun(args.num_gpus, argv)
    if args.num_gpus is not None and args.num_gpus != world_size:
        raise UserError(f"--num_gpus {args.num_gpus} but torchrun started {world_size} process(es)")
    dist = init_distributed(args.device, args.dist_url)
    try:
        return run_curriculum(args, dist)
    finally:
        cleanup(dist)


def relaunch_under_torchrun(num_gpus: int, argv: list[str]) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node=N -m toe.recipes.et_training ARGV``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_gpus}"]
    os.execv(sys.executable, [*command, "-m", __name__, *argv])


def run_curriculum(args: argparse.Namespace, dist: DistInfo) -> list[dict | None]:
    """Print the plan, then train the five stages in order; returns each stage's last log record."""
    patch = efficienttrain.model_patch_size(args)
    schedule = schedule_from_args(args)
    if schedule is not None and patch is None:
        raise UserError(f"--model {args.model} has no patch embedding: ToE needs a ViT (or pass --no-toe)")
    sizes = tuple(args.input_sizes or stage_input_sizes(args.input_size, patch or 32))
    bad = [s for s in sizes if patch and s % patch]
    if bad:
        raise UserError(f"stage input size {bad[0]} is not divisible by the patch size {patch} of --model {args.model}")
    for index, size in enumerate(sizes, start=1):
        if schedule is not None:
            try:
                schedule.token_counts((size // patch) ** 2)
            except ValueError as error:
                raise UserError(f"stage {index} at {size} px (--input_sizes): {flag_names(str(error))}") from None
    stages = plan_stages(args.epochs, sizes, args.final_bs, dist.world_size, args.effective_bs)
    log = RunLogger(None, dist.is_main)
    log.print(
        f"EfficientTrain: {args.model}, {args.epochs} epochs in {NUM_STAGES} stages, {args.effective_bs} images per "
        f"update, peak lr {args.lr:.2e}, {args.warmup_epochs} warm-up epochs, "
        + ("ToE off" if schedule is None else f"ToE keep {schedule.keep_rate} from epochs {schedule.expansion_step}")
    )
    log.print(format_plan(stages, dist.world_size, schedule, patch))
    return [run_stage(args, stage, dist, log) for stage in stages]


def stage_args(args: argparse.Namespace, stage: Stage) -> argparse.Namespace:
    """The trainer's flags for ``stage`` (what ``main.py`` would be given)."""
    flags = copy.copy(args)
    flags.input_size = stage.input_size
    flags.load_size = args.input_size
    flags.batch_size = stage.batch_size
    flags.update_freq = stage.update_freq
    flags.end_epoch = stage.end_epoch
    flags.aa = stage.aa
    flags.auto_resume = args.auto_resume or stage.index > 1
    flags.resume, flags.start_epoch, flags.eval = "", 0, False
    return flags


def run_stage(args: argparse.Namespace, stage: Stage, dist: DistInfo, log: RunLogger) -> dict | None:
    """Train one stage; on CUDA out-of-memory retry once with half the batch and twice the accumulation."""
    flags = stage_args(args, stage)
    retried = False
    while True:
        release_memory()  # the previous stage's (or failed attempt's) model, optimizer and activations
        barrier(dist)  # every process reads the checkpoint only once rank 0 has written it
        log.print(
            f"stage {stage.index}/{NUM_STAGES}: epochs {stage.first_epoch}-{stage.end_epoch - 1} at "
            f"{stage.input_size} px, {stage.aa}, batch {flags.batch_size} x {flags.update_freq} x {dist.world_size}"
        )
        try:
            return efficienttrain.train_stage(flags, dist)
        except OutOfMemory:  # the stage's run_recipe turned torch's error into this one
            if retried or flags.batch_size < 2:
                raise UserError(
                    f"stage {stage.index} ran out of GPU memory at batch {flags.batch_size} per process; "
                    "lower --final_bs"
                ) from None
        retried = True
        flags.batch_size //= 2
        flags.update_freq *= 2
        flags.auto_resume = True  # continue from the last checkpoint the failed attempt wrote, if any
        log.print(f"stage {stage.index} ran out of GPU memory: retrying with half the batch, twice the accumulation")


def release_memory() -> None:
    """Return the GPU memory cached for the previous stage (its model, optimizer and activations are freed
    as soon as the stage returns: nothing of a run holds itself in a reference cycle)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
