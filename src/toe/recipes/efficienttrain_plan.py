"""The EfficientTrain curriculum: five stages of one run, and how ToE's absolute epochs cross them.

Pure arithmetic, no tensors. For 300 epochs at 224 px, 8 processes and --final_bs 256 this gives the
table of docs/recipes.md:

    stage     epochs  input  RandAugment  batch x accum x procs  ToE patch tokens (epochs)
        1       0-59    160           m1            512 x 1 x 8  60 of 100
        2     60-119    160           m3            512 x 1 x 8  60 of 100 (60-99), 80 of 100 (100-119)
        3    120-179    160           m5            512 x 1 x 8  80 of 100
        4    180-239    192           m7            512 x 1 x 8  114 of 144 (180-199), 144 of 144 (200-239)
        5    240-299    224           m9            256 x 2 x 8  196 of 196
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserError
from ..schedule import ToESchedule

MAGNITUDES = (1, 3, 5, 7, 9)  # RandAugment magnitude of each stage
SIZE_FRACTIONS = (5 / 7, 5 / 7, 5 / 7, 6 / 7, 1.0)  # input size / final input size: 160, 160, 160, 192, 224
NUM_STAGES = len(MAGNITUDES)


@dataclass(frozen=True)
class Segment:
    """Epochs [first, end) of a stage in which ToE feeds ``kept`` of ``num_patches`` patch tokens to blocks 1..."""

    first: int
    end: int
    kept: int
    num_patches: int


@dataclass(frozen=True)
class Stage:
    """One EfficientTrain stage: epochs [first_epoch, end_epoch) at ``input_size`` px."""

    index: int  # 1..5
    first_epoch: int
    end_epoch: int
    input_size: int
    magnitude: int
    batch_size: int  # per process
    update_freq: int  # gradient accumulation steps per optimizer update

    @property
    def aa(self) -> str:
        """The stage's RandAugment policy (timm syntax)."""
        return f"rand-m{self.magnitude}-mstd0.5-inc1"


def stage_input_sizes(final_size: int, multiple: int) -> tuple[int, ...]:
    """Input sizes of the five stages: 5/7, 5/7, 5/7, 6/7 and 7/7 of ``final_size``, each rounded to a
    multiple of ``multiple`` (the patch size of a ViT, 32 for a CNN): 160/160/160/192/224 for 224."""
    sizes = tuple(max(multiple, round(final_size * f / multiple) * multiple) for f in SIZE_FRACTIONS)
    return sizes[:-1] + (final_size,)


def end_epochs(epochs: int) -> tuple[int, ...]:
    """Epoch at which each stage ends (exclusive): each fifth of the run (60, 120, ..., 300 for 300), truncated
    as ET_training.py computes it, ``int(epochs / 5 * i)`` (20, 40, 61, 81, 102 for 102)."""
    if epochs < NUM_STAGES:
        raise UserError(f"--epochs must be at least {NUM_STAGES} (one per EfficientTrain stage), got {epochs}")
    return tuple(int(epochs / NUM_STAGES * (i + 1)) for i in range(NUM_STAGES))


def plan_stages(
    epochs: int,
    input_sizes: Sequence[int],
    final_bs: int,
    num_processes: int,
    effective_bs: int,
) -> list[Stage]:
    """The five stages. A stage below the final input size runs 2 x ``final_bs`` images per process, the
    final one ``final_bs``; gradient accumulation makes every update ``effective_bs`` images."""
    if len(input_sizes) != NUM_STAGES:
        raise UserError(f"--input_sizes needs {NUM_STAGES} sizes (one per stage), got {len(input_sizes)}")
    if any(b < a for a, b in zip(input_sizes[:-1], input_sizes[1:])) or input_sizes[0] < 1:
        raise UserError(f"--input_sizes must be positive and non-decreasing, got {' '.join(map(str, input_sizes))}")
    final_size = input_sizes[-1]
    stages, first = [], 0
    for index, (end, size, magnitude) in enumerate(zip(end_epochs(epochs), input_sizes, MAGNITUDES), start=1):
        batch = final_bs * (2 if size < final_size else 1)
        step_images = batch * num_processes
        if effective_bs % step_images:
            raise UserError(
                f"--effective_bs {effective_bs} is not a multiple of stage {index}'s {batch} images x "
                f"{num_processes} process(es) (--final_bs {final_bs}: 2x below the final size, 1x at it)"
            )
        stages.append(Stage(index, first, end, size, magnitude, batch, effective_bs // step_images))
        first = end
    return stages


def toe_segments(stage: Stage, schedule: ToESchedule | None, patch_size: int | None) -> list[Segment]:
    """ToE's token counts within ``stage``: its epochs split where a ToE stage starts (ToE's epochs are
    absolute epochs of the whole run); empty without ToE or for models without patches."""
    if schedule is None or patch_size is None:
        return []
    num_patches = (stage.input_size // patch_size) ** 2
    counts = schedule.token_counts(num_patches)
    starts = [s for s in schedule.expansion_step if stage.first_epoch < s < stage.end_epoch]
    bounds = [stage.first_epoch, *starts, stage.end_epoch]
    segments = []
    for first, end in zip(bounds[:-1], bounds[1:]):
        segments.append(Segment(first, end, counts.kept_in(schedule.stage(first)), num_patches))
    return segments


def format_plan(stages: list[Stage], num_processes: int, schedule: ToESchedule | None, patch_size: int | None) -> str:
    """The plan as a table (one row per stage), printed before training."""
    lines = [
        f"{'stage':>5}  {'epochs':>9}  {'input':>5}  {'RandAugment':>11}  {'batch x accum x procs':>21}  "
        "ToE patch tokens (epochs)"
    ]
    for stage in stages:
        segments = toe_segments(stage, schedule, patch_size)
        if not segments:
            tokens = "- (ToE off)" if schedule is None else "-"
        elif len(segments) == 1:
            tokens = f"{segments[0].kept} of {segments[0].num_patches}"
        else:
            tokens = ", ".join(f"{s.kept} of {s.num_patches} ({s.first}-{s.end - 1})" for s in segments)
        batch = f"{stage.batch_size} x {stage.update_freq} x {num_processes}"
        lines.append(
            f"{stage.index:>5}  {f'{stage.first_epoch}-{stage.end_epoch - 1}':>9}  {stage.input_size:>5}  "
            f"{f'm{stage.magnitude}':>11}  {batch:>21}  {tokens}"
        )
    return "\n".join(lines)
