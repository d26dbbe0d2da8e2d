"""The run scripts: required variables are checked, and the flags they pass match the paper's settings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, record_script_argv

from toe.options import schedule_from_args
from toe.recipes import deit

RUN = ROOT / "ToE" / "deit" / "run"


def script_argv(tmp_path: Path, script: str, **variables: str) -> list[str]:
    """Run ``script`` with ``torchrun`` replaced by a stub that records its arguments."""
    return record_script_argv(RUN / script, tmp_path, **variables)


def main_flags(argv: list[str]):
    """The ToE/deit/main.py flags within a torchrun command line, parsed by the recipe's parser."""
    start = next(i for i, a in enumerate(argv) if a.endswith("ToE/deit/main.py"))
    return argv[:start], deit.build_parser().parse_args(argv[start + 1 :])


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_imagenet_toe_scripts_use_the_paper_settings(tmp_path, size):
    launcher, args = main_flags(script_argv(tmp_path, f"imagenet_{size}_run1.sh", DATA="/data/in1k", OUTPUT="o"))
    assert "--nproc_per_node=4" in launcher
    assert (args.model, args.batch_size, args.seed, args.patch_size) == (f"deit_{size}_patch16_224", 256, 3407, 16)
    assert (args.data_path, args.output_dir, args.epochs) == ("/data/in1k", "o", 300)
    schedule = schedule_from_args(args)
    assert schedule.expansion_step == (0, 100, 200) and schedule.keep_rate == (0.5, 0.75, 1.0)
    assert schedule.initialization_keep_rate == 0.25 and schedule.expansion_multiple_stage == 2


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_baseline_scripts_have_no_toe(tmp_path, size):
    _, args = main_flags(script_argv(tmp_path, f"imagenet_{size}_baseline.sh", DATA="/d", OUTPUT="o"))
    assert schedule_from_args(args) is None and args.model == f"deit_{size}_patch16_224"


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_finetune_scripts(tmp_path, classes):
    _, args = main_flags(
        script_argv(tmp_path, f"cifar{classes}_finetune.sh", DATA="/c", OUTPUT="o", CHECKPOINT="ck.pth")
    )
    assert (args.data_set, args.finetune, args.input_size) == (f"CIFAR{classes}", "ck.pth", 224)
    assert args.batch_size * 4 == 768 and args.opt == "sgd"


def test_multinode_script_uses_a_rendezvous_endpoint(tmp_path):
    launcher, args = main_flags(
        script_argv(tmp_path, "multinode.sh", DATA="/d", OUTPUT="o", NNODES="2", MASTER_ADDR="node0", NGPUS="4")
    )
    assert "--nnodes=2" in launcher and "--rdzv-endpoint=node0:29500" in launcher
    assert args.batch_size * 2 * 4 == 1024 and args.auto_resume


@pytest.mark.parametrize(
    "script", ["imagenet_small_run1.sh", "imagenet_small_baseline.sh", "cifar10_finetune.sh", "multinode.sh"]
)
def test_scripts_stop_when_a_variable_is_unset(script):
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "OUTPUT", "CHECKPOINT", "NNODES")}
    result = subprocess.run(["bash", RUN / script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: set ") and len(result.stderr.strip().splitlines()) == 1
