"""ToE/lvvit/run: required variables are checked, and the flags the scripts pass match the paper's settings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, record_script_argv

from toe.options import schedule_from_args
from toe.recipes import generate_label, lvvit

RUN = ROOT / "ToE" / "lvvit" / "run"
SIZES = {"tiny": ("lvvit_t", 0.1), "small": ("lvvit_s", 0.1), "medium": ("lvvit_m", 0.2)}


def script_argv(tmp_path: Path, script: str, stub: str = "torchrun", **variables: str) -> list[str]:
    """Run ``script`` with ``stub`` (torchrun, or the python of PYTHON) recording its arguments."""
    return record_script_argv(RUN / script, tmp_path, stub, PYTHON=str(tmp_path / "bin" / "python"), **variables)


def split_at(argv: list[str], script: str) -> tuple[list[str], list[str]]:
    start = next(i for i, a in enumerate(argv) if a.endswith(f"ToE/lvvit/{script}"))
    return argv[:start], argv[start + 1 :]


@pytest.mark.parametrize("size", SIZES)
def test_imagenet_toe_scripts_use_the_paper_settings(tmp_path, size):
    argv = script_argv(tmp_path, f"imagenet_{size}_run1.sh", DATA="/data/in1k", LABELS="/data/labels", OUTPUT="o")
    launcher, flags = split_at(argv, "main.py")
    args = lvvit.parse_args(flags)
    assert "--nproc_per_node=4" in launcher
    assert (args.model, args.drop_path) == SIZES[size]
    assert (args.data_dir, args.output, args.batch_size, args.img_size) == ("/data/in1k", "o", 256, 224)
    assert (args.lr, args.epochs, args.cooldown_epochs, args.warmup_epochs) == (1.6e-3, 300, 10, 5)
    assert args.token_label and args.token_label_data == "/data/labels" and args.token_label_size == 14
    assert args.model_ema and args.model_ema_decay == 0.99992 and args.apex_amp
    schedule = schedule_from_args(args)
    assert schedule.expansion_step == (0, 100, 200) and schedule.keep_rate == (0.4, 0.7, 1.0)
    assert schedule.initialization_keep_rate == 0.2 and schedule.expansion_multiple_stage == 2


@pytest.mark.parametrize("size", SIZES)
def test_baseline_scripts_have_no_toe(tmp_path, size):
    argv = script_argv(tmp_path, f"imagenet_{size}_baseline.sh", DATA="/d", LABELS="/l", OUTPUT="o")
    args = lvvit.parse_args(split_at(argv, "main.py")[1])
    assert schedule_from_args(args) is None and args.model == SIZES[size][0] and args.token_label


def test_label_script_uses_nfnet_f6_at_576_px(tmp_path):
    argv = script_argv(tmp_path, "generate_labels.sh", stub="python", DATA="/d", LABELS="/l")
    args = generate_label.build_parser().parse_args(split_at(argv, "generate_label.py")[1])
    assert (args.data_dir, args.output, args.model, args.img_size) == ("/d", "/l", "dm_nfnet_f6", 576)
    assert args.pretrained and not args.checkpoint and args.crop_pct == 1.0  # the central square, as upstream
    argv = script_argv(tmp_path, "generate_labels.sh", stub="python", DATA="/d", LABELS="/l", CHECKPOINT="w.pth")
    args = generate_label.build_parser().parse_args(split_at(argv, "generate_label.py")[1])
    assert args.checkpoint == "w.pth" and not args.pretrained


@pytest.mark.parametrize("script", ["imagenet_small_run1.sh", "imagenet_tiny_baseline.sh", "generate_labels.sh"])
def test_scripts_stop_when_a_variable_is_unset(script):
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "LABELS", "OUTPUT")}
    result = subprocess.run(["bash", RUN / script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: set ") and len(result.stderr.strip().splitlines()) == 1
