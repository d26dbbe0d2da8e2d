"""The EfficientTrain run scripts: required variables are checked, and their flags are the paper's settings."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT

from toe.options import schedule_from_args
from toe.recipes import et_training
from toe.recipes.efficienttrain_plan import plan_stages

RUN = ROOT / "ToE" / "EfficientTrain" / "run"


def recorded_calls(tmp_path: Path, script: str, stub: str, *extra: str, **variables: str) -> list[list[str]]:
    """Run ``script extra...`` with the command ``stub`` (torchrun or python) replaced by one that records its
    arguments; returns the argument list of every call."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir(exist_ok=True)
    record = tmp_path / "calls.txt"
    path = stub_dir / stub
    path.write_text(f'#!/usr/bin/env bash\n{{ printf "%s\\n" "$@"; echo "--END--"; }} >> {shlex.quote(str(record))}\n')
    path.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub_dir}:{os.environ['PATH']}", **variables}
    result = subprocess.run(["bash", RUN / script, *extra], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = record.read_text().split("--END--\n")
    return [call.splitlines() for call in calls if call]


def driver_args(argv: list[str]):
    """The part of a command line after ET_training.py, parsed as the driver parses it; and what precedes it."""
    start = next(i for i, a in enumerate(argv) if a.endswith("ToE/EfficientTrain/ET_training.py"))
    return argv[:start], et_training.parse_args(argv[start + 1 :])


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_imagenet_scripts_use_the_paper_settings(tmp_path, size):
    (call,) = recorded_calls(tmp_path, f"imagenet_{size}_run1.sh", "torchrun", DATA="/data/in1k", OUTPUT="o")
    launcher, args = driver_args(call)
    assert launcher == ["--nproc_per_node=8"]
    assert (args.model, args.final_bs, args.epochs, args.num_gpus) == (f"deit_{size}_patch16_224", 256, 300, 8)
    assert (args.data_path, args.output_dir, args.input_size, args.input_sizes) == ("/data/in1k", "o", 224, None)
    assert (args.lr, args.warmup_epochs, args.effective_bs, args.use_amp, args.clip_grad) == (4e-3, 20, 4096, True, 5.0)
    schedule = schedule_from_args(args)
    assert schedule.expansion_step == (0, 100, 200) and schedule.keep_rate == (0.6, 0.8, 1.0)
    assert schedule.initialization_keep_rate == 0.3 and schedule.expansion_multiple_stage == 2
    stages = plan_stages(args.epochs, (160, 160, 160, 192, 224), args.final_bs, args.num_gpus, args.effective_bs)
    assert [(s.batch_size, s.update_freq) for s in stages] == [(512, 1)] * 4 + [(256, 2)]


def test_gpu_count_and_extra_flags_pass_through(tmp_path):
    (call,) = recorded_calls(
        tmp_path, "imagenet_small_run1.sh", "torchrun", "--final_bs", "128", DATA="/d", OUTPUT="o", NGPUS="4"
    )
    launcher, args = driver_args(call)
    assert launcher == ["--nproc_per_node=4"] and (args.num_gpus, args.final_bs) == (4, 128)


def test_scripts_stop_when_a_variable_is_unset():
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "OUTPUT")}
    for script in ("imagenet_small_run1.sh", "imagenet_tiny_run1.sh"):
        result = subprocess.run(["bash", RUN / script], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        assert result.stderr.startswith("error: set DATA first") and len(result.stderr.strip().splitlines()) == 1


def test_demo_script_makes_the_demo_data_then_runs_five_small_stages(tmp_path):
    make_data, train = recorded_calls(tmp_path, "demo.sh", "python", DATA="d", OUTPUT="o")
    assert make_data == ["datasets/make_demo_data.py", "--out", "d"]
    _, args = driver_args(train)
    assert (args.data_path, args.output_dir, args.device, args.model) == ("d", "o", "cpu", "deit_tiny_patch16_224")
    assert args.input_sizes == [16, 16, 16, 24, 32] and args.input_size == 32
    stages = plan_stages(args.epochs, args.input_sizes, args.final_bs, 1, args.effective_bs)
    assert [(s.first_epoch, s.end_epoch, s.batch_size, s.update_freq) for s in stages] == [
        (0, 2, 128, 1),
        (2, 4, 128, 1),
        (4, 6, 128, 1),
        (6, 8, 128, 1),
        (8, 10, 64, 2),
    ]
    assert schedule_from_args(args).expansion_step == (0, 3, 7)


def test_driver_takes_upstreams_drop_path_per_model():
    """ET_training.py's table: 0.1 for the DeiTs (also without the run scripts' flag), a given value wins."""
    parse = et_training.parse_args
    assert parse(["--model", "deit_small_patch16_224"]).drop_path == 0.1
    assert parse(["--model", "deit_tiny_patch16_224", "--no-toe"]).drop_path == 0.1
    assert parse(["--model", "convnext_small"]).drop_path == 0.4
    assert parse(["--model", "deit_tiny_patch16_224", "--drop_path", "0.05"]).drop_path == 0.05
    assert parse(["--model", "vit_tiny_patch16_224"]).drop_path == 0.0  # not in upstream's table
