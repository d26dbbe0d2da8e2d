"""ToE/YOLOS/run: the run scripts pass the reference settings to main.py, and stop without their variables."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import ROOT, record_script_argv

from toe.options import schedule_from_args
from toe.recipes import yolos

RUN = ROOT / "ToE" / "YOLOS" / "run"


def main_flags(argv: list[str]):
    start = next(i for i, a in enumerate(argv) if a.endswith("ToE/YOLOS/main.py"))
    return argv[:start], yolos.build_parser().parse_args(argv[start + 1 :])


def run_script(tmp_path, script: str):
    return main_flags(record_script_argv(RUN / script, tmp_path, DATA="/coco", PRETRAINED="deit.pth", OUTPUT="o"))


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_run_scripts_use_the_reference_settings(tmp_path, size):
    launcher, args = run_script(tmp_path, f"coco_{size}_run1.sh")
    assert "--nproc_per_node=8" in launcher
    assert (args.coco_path, args.pre_trained, args.output_dir, args.backbone_name) == ("/coco", "deit.pth", "o", size)
    schedule = schedule_from_args(args)
    assert schedule.keep_rate == (0.5, 0.75, 1.0) and schedule.initialization_keep_rate == 0.25
    assert schedule.expansion_multiple_stage == 2
    if size == "tiny":
        assert (args.batch_size, args.lr, args.epochs, args.eval_size) == (2, 5e-5, 300, 512)
        assert args.init_pe_size == [800, 1333] and args.mid_pe_size is None
        assert schedule.expansion_step == (5, 100, 200)
    else:
        assert (args.batch_size, args.lr, args.epochs, args.eval_size) == (1, 2.5e-5, 150, 800)
        assert args.init_pe_size == args.mid_pe_size == [512, 864]
        assert schedule.expansion_step == (5, 50, 100)


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_baseline_scripts_match_the_toe_scripts_without_toe(tmp_path, size):
    _, toe_args = run_script(tmp_path, f"coco_{size}_run1.sh")
    _, args = run_script(tmp_path, f"coco_{size}_baseline.sh")
    assert schedule_from_args(args) is None
    same = ("batch_size", "lr", "epochs", "eval_size", "init_pe_size", "mid_pe_size", "backbone_name", "num_workers")
    assert all(getattr(args, key) == getattr(toe_args, key) for key in same)


def test_scripts_stop_when_a_variable_is_unset():
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "PRETRAINED", "OUTPUT")}
    result = subprocess.run(["bash", RUN / "coco_tiny_run1.sh"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: set DATA")
