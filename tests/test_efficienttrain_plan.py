"""The EfficientTrain curriculum of docs/recipes.md: stages, batches, and how ToE's epochs cross them."""

from __future__ import annotations

import pytest

from toe.options import UserError
from toe.recipes.efficienttrain_plan import (
    Stage,
    end_epochs,
    format_plan,
    plan_stages,
    stage_input_sizes,
    toe_segments,
)
from toe.schedule import ToESchedule

ET_TOE = ToESchedule((0, 100, 200), (0.6, 0.8, 1.0), 0.3, 2)  # the paper's settings for EfficientTrain


def paper_plan(num_processes: int = 8, final_bs: int = 256) -> list[Stage]:
    return plan_stages(300, stage_input_sizes(224, 16), final_bs, num_processes, 4096)


def test_the_300_epoch_plan_matches_recipes_md():
    stages = paper_plan()
    assert [(s.first_epoch, s.end_epoch) for s in stages] == [(0, 60), (60, 120), (120, 180), (180, 240), (240, 300)]
    assert [s.input_size for s in stages] == [160, 160, 160, 192, 224]
    assert [s.aa for s in stages] == [f"rand-m{m}-mstd0.5-inc1" for m in (1, 3, 5, 7, 9)]
    # 2 x final_bs below 224 px, final_bs at 224; 4096 images per update on 8 GPUs
    assert [(s.batch_size, s.update_freq) for s in stages] == [(512, 1)] * 4 + [(256, 2)]
    assert all(s.batch_size * s.update_freq * 8 == 4096 for s in stages)
    # on 4 GPUs the accumulation doubles, the per-GPU batches stay
    assert [(s.batch_size, s.update_freq) for s in paper_plan(4)] == [(512, 2)] * 4 + [(256, 4)]


def test_toe_tokens_cross_the_resolution_stages_as_in_recipes_md():
    """0-99 at 160 px with 60 of 100 patches, 100-179 at 160 with 80, 180-199 at 192 with 114 of 144,
    200-239 at 192 full, 240-299 at 224 full (196)."""
    merged: list[list] = []
    for stage in paper_plan():
        for seg in toe_segments(stage, ET_TOE, patch_size=16):
            if merged and merged[-1][2:] == [stage.input_size, seg.kept, seg.num_patches]:
                merged[-1][1] = seg.end - 1
            else:
                merged.append([seg.first, seg.end - 1, stage.input_size, seg.kept, seg.num_patches])
    assert merged == [
        [0, 99, 160, 60, 100],
        [100, 179, 160, 80, 100],
        [180, 199, 192, 114, 144],
        [200, 239, 192, 144, 144],
        [240, 299, 224, 196, 196],
    ]
    assert sorted({seg.kept for s in paper_plan() for seg in toe_segments(s, ET_TOE, 16)}) == [60, 80, 114, 144, 196]


def test_the_printed_plan_table():
    lines = format_plan(paper_plan(), 8, ET_TOE, 16).splitlines()
    assert lines[0].split() == "stage epochs input RandAugment batch x accum x procs ToE patch tokens (epochs)".split()
    rows = [line.split(None, 4) for line in lines[1:]]
    assert [r[:4] for r in rows] == [
        ["1", "0-59", "160", "m1"],
        ["2", "60-119", "160", "m3"],
        ["3", "120-179", "160", "m5"],
        ["4", "180-239", "192", "m7"],
        ["5", "240-299", "224", "m9"],
    ]
    assert [r[4] for r in rows] == [
        "512 x 1 x 8  60 of 100",
        "512 x 1 x 8  60 of 100 (60-99), 80 of 100 (100-119)",
        "512 x 1 x 8  80 of 100",
        "512 x 1 x 8  114 of 144 (180-199), 144 of 144 (200-239)",
        "256 x 2 x 8  196 of 196",
    ]
    without_toe = format_plan(paper_plan(), 8, None, None).splitlines()
    assert all(line.endswith("- (ToE off)") for line in without_toe[1:])


def test_stage_sizes_derive_from_the_final_size_as_160_192_224_from_224():
    assert stage_input_sizes(224, 16) == (160, 160, 160, 192, 224)
    assert stage_input_sizes(224, 32) == (160, 160, 160, 192, 224)  # CNNs: multiples of their stride
    assert stage_input_sizes(384, 16) == (272, 272, 272, 336, 384)
    assert stage_input_sizes(32, 4) == (24, 24, 24, 28, 32)
    assert end_epochs(10) == (2, 4, 6, 8, 10)
    # ET_training.py's int(epochs / 5 * i), not rounding (which gives 41 and 82 for 102 epochs)
    assert end_epochs(7) == (1, 2, 4, 5, 7) and end_epochs(102) == (20, 40, 61, 81, 102)


def test_a_toe_stage_starting_later_leaves_the_first_epochs_full_token():
    schedule = ToESchedule((2, 4), (0.5, 1.0), 0.25, 2)
    stage = Stage(1, 0, 3, 16, 1, 8, 1)
    assert [(s.first, s.end, s.kept) for s in toe_segments(stage, schedule, 4)] == [(0, 2, 16), (2, 3, 8)]


@pytest.mark.parametrize(
    "args, message",
    [
        ((300, (160, 160, 160, 192), 256, 8, 4096), "needs 5 sizes"),
        ((300, (160, 192, 160, 192, 224), 256, 8, 4096), "non-decreasing"),
        ((300, (160, 160, 160, 192, 224), 256, 8, 4000), "--effective_bs 4000 is not a multiple of stage 1"),
        ((300, (160, 160, 160, 192, 224), 256, 16, 4096), "--effective_bs 4096 is not a multiple"),
        ((4, (160, 160, 160, 192, 224), 256, 8, 4096), "--epochs must be at least 5"),
    ],
)
def test_bad_plans_are_user_errors(args, message):
    with pytest.raises(UserError, match=message):
        plan_stages(*args)
