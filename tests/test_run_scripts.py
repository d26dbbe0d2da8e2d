"""The run scripts of the four recipes (ToE/<recipe>/run), with torchrun (or python) replaced by a stub that
records its arguments. Every recipe's ToE scripts pass the paper's settings (YOLOS: the reference settings) and
a baseline script is its ToE script without the ToE flags; every script stops with one line when a variable it
needs is unset. Then the scripts of one recipe only: DeiT's fine-tuning and multi-node scripts, LV-ViT's label
generation, EfficientTrain's stage plan, pass-through and demo."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, recorded_calls

from toe.options import schedule_from_args
from toe.recipes import deit, et_training, generate_label, lvvit, yolos
from toe.recipes.efficienttrain_plan import plan_stages

# the flags of a ToE schedule, which a baseline script leaves out
TOE_FLAGS = ("expansion_step", "keep_rate", "initialization_keep_rate", "expansion_multiple_stage")


def split_at(argv: list[str], entry: str) -> tuple[list[str], list[str]]:
    """A command line cut at the script it runs (``entry``, e.g. ToE/deit/main.py): (launcher flags, its flags)."""
    start = next(i for i, a in enumerate(argv) if a.endswith(entry))
    return argv[:start], argv[start + 1 :]


@dataclass(frozen=True)
class Recipe:
    folder: str  # ToE/<folder>
    entry: str  # what torchrun runs, in ToE/<folder>
    parse: Callable  # the entry's parser: flags -> namespace
    prefix: str  # <prefix>_<size>_run1.sh (with ToE), <prefix>_<size>_baseline.sh (without)
    variables: dict[str, str]  # the variables the scripts need
    gpus: int  # processes per node when NGPUS is unset
    settings: dict[str, dict]  # size -> the namespace entries its scripts set (with and without ToE)
    schedule: dict[str, tuple]  # size -> expansion steps, keep rates, initialization keep rate, sub-steps

    @property
    def run(self) -> Path:
        return ROOT / "ToE" / self.folder / "run"

    def script(self, size: str, kind: str = "run1") -> str:
        return f"{self.prefix}_{size}_{kind}.sh"

    def launch(self, tmp_path: Path, script: str, *extra: str, **variables: str):
        """The one torchrun call of ``script``: (launcher flags, the entry's flags parsed by its parser)."""
        (call,) = recorded_calls(self.run / script, tmp_path, *extra, **{**self.variables, **variables})
        launcher, flags = split_at(call, f"ToE/{self.folder}/{self.entry}")
        return launcher, self.parse(flags)


def lvvit_size(model: str, drop_path: float) -> dict:
    return {
        **{"model": model, "drop_path": drop_path, "data_dir": "/data/in1k", "output": "o"},
        **{"batch_size": 256, "img_size": 224, "lr": 1.6e-3, "epochs": 300, "cooldown_epochs": 10},
        **{"warmup_epochs": 5, "token_label": True, "token_label_data": "/data/labels", "token_label_size": 14},
        **{"model_ema": True, "model_ema_decay": 0.99992, "apex_amp": True},
    }


def et_size(size: str) -> dict:
    return {
        **{"model": f"deit_{size}_patch16_224", "final_bs": 256, "epochs": 300, "num_gpus": 8},
        **{"data_path": "/data/in1k", "output_dir": "o", "input_size": 224, "input_sizes": None},
        **{"lr": 4e-3, "warmup_epochs": 20, "effective_bs": 4096, "use_amp": True, "clip_grad": 5.0},
    }


YOLOS_COMMON = {"coco_path": "/coco", "pre_trained": "deit.pth", "output_dir": "o"}

RECIPES = {
    "deit": Recipe(
        folder="deit",
        entry="main.py",
        parse=lambda flags: deit.build_parser().parse_args(flags),
        prefix="imagenet",
        variables={"DATA": "/data/in1k", "OUTPUT": "o"},
        gpus=4,
        settings={
            size: {"model": f"deit_{size}_patch16_224", "batch_size": 256, "seed": 3407, "patch_size": 16}
            | {"data_path": "/data/in1k", "output_dir": "o", "epochs": 300}
            for size in ("tiny", "small", "base")
        },
        schedule=dict.fromkeys(("tiny", "small", "base"), ((0, 100, 200), (0.5, 0.75, 1.0), 0.25, 2)),
    ),
    "lvvit": Recipe(
        folder="lvvit",
        entry="main.py",
        parse=lvvit.parse_args,
        prefix="imagenet",
        variables={"DATA": "/data/in1k", "LABELS": "/data/labels", "OUTPUT": "o"},
        gpus=4,
        settings={
            "tiny": lvvit_size("lvvit_t", 0.1),
            "small": lvvit_size("lvvit_s", 0.1),
            "medium": lvvit_size("lvvit_m", 0.2),
        },
        schedule=dict.fromkeys(("tiny", "small", "medium"), ((0, 100, 200), (0.4, 0.7, 1.0), 0.2, 2)),
    ),
    "efficienttrain": Recipe(
        folder="EfficientTrain",
        entry="ET_training.py",
        parse=et_training.parse_args,
        prefix="imagenet",
        variables={"DATA": "/data/in1k", "OUTPUT": "o"},
        gpus=8,
        settings={size: et_size(size) for size in ("tiny", "small")},
        schedule=dict.fromkeys(("tiny", "small"), ((0, 100, 200), (0.6, 0.8, 1.0), 0.3, 2)),
    ),
    "yolos": Recipe(
        folder="YOLOS",
        entry="main.py",
        parse=lambda flags: yolos.build_parser().parse_args(flags),
        prefix="coco",
        variables={"DATA": "/coco", "PRETRAINED": "deit.pth", "OUTPUT": "o"},
        gpus=8,
        settings={
            "tiny": YOLOS_COMMON
            | {"backbone_name": "tiny", "batch_size": 2, "lr": 5e-5, "epochs": 300, "eval_size": 512}
            | {"init_pe_size": [800, 1333], "mid_pe_size": None},
            "small": YOLOS_COMMON
            | {"backbone_name": "small", "batch_size": 1, "lr": 2.5e-5, "epochs": 150, "eval_size": 800}
            | {"init_pe_size": [512, 864], "mid_pe_size": [512, 864]},
        },
        schedule={
            "tiny": ((5, 100, 200), (0.5, 0.75, 1.0), 0.25, 2),
            "small": ((5, 50, 100), (0.5, 0.75, 1.0), 0.25, 2),
        },
    ),
}
WITH_BASELINES = ("deit", "lvvit", "yolos")  # ToE/EfficientTrain/run has no baseline scripts


def sizes(*names: str) -> list:
    return [pytest.param(name, size, id=f"{name}-{size}") for name in names for size in RECIPES[name].settings]


def entries(args, expected: dict) -> dict:
    """The entries of the namespace ``args`` that ``expected`` names."""
    return {key: getattr(args, key) for key in expected}


@pytest.mark.parametrize(("name", "size"), sizes(*RECIPES))
def test_toe_scripts_pass_the_papers_settings(tmp_path, name, size):
    recipe = RECIPES[name]
    launcher, args = recipe.launch(tmp_path, recipe.script(size))
    assert launcher == [f"--nproc_per_node={recipe.gpus}"]
    assert entries(args, recipe.settings[size]) == recipe.settings[size]
    schedule = schedule_from_args(args)
    assert schedule.expansion_step == recipe.schedule[size][0] and schedule.keep_rate == recipe.schedule[size][1]
    assert schedule.initialization_keep_rate == recipe.schedule[size][2]
    assert schedule.expansion_multiple_stage == recipe.schedule[size][3]


@pytest.mark.parametrize(("name", "size"), sizes(*WITH_BASELINES))
def test_baseline_scripts_are_the_toe_scripts_without_toe(tmp_path, name, size):
    recipe = RECIPES[name]
    _, toe_args = recipe.launch(tmp_path, recipe.script(size))
    launcher, args = recipe.launch(tmp_path, recipe.script(size, "baseline"))
    assert launcher == [f"--nproc_per_node={recipe.gpus}"]
    assert schedule_from_args(args) is None
    assert entries(args, recipe.settings[size]) == recipe.settings[size]
    without_toe = {key: value for key, value in vars(toe_args).items() if key not in TOE_FLAGS}
    assert {key: value for key, value in vars(args).items() if key not in TOE_FLAGS} == without_toe


UNSET = {
    "deit": ["imagenet_small_run1.sh", "imagenet_small_baseline.sh", "cifar10_finetune.sh", "multinode.sh"],
    "lvvit": ["imagenet_small_run1.sh", "imagenet_tiny_baseline.sh", "generate_labels.sh"],
    "efficienttrain": ["imagenet_small_run1.sh", "imagenet_tiny_run1.sh"],
    "yolos": ["coco_tiny_run1.sh"],
}


@pytest.mark.parametrize(
    ("name", "script"), [pytest.param(name, s, id=f"{name}-{s}") for name, scripts in UNSET.items() for s in scripts]
)
def test_scripts_stop_with_one_line_when_a_variable_is_unset(name, script):
    required = ("DATA", "OUTPUT", "LABELS", "PRETRAINED", "CHECKPOINT", "NNODES")
    env = {k: v for k, v in os.environ.items() if k not in required}
    result = subprocess.run(["bash", RECIPES[name].run / script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: set DATA first") and len(result.stderr.strip().splitlines()) == 1


# DeiT


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_finetune_scripts(tmp_path, classes):
    _, args = RECIPES["deit"].launch(
        tmp_path, f"cifar{classes}_finetune.sh", DATA="/c", OUTPUT="o", CHECKPOINT="ck.pth"
    )
    assert (args.data_set, args.finetune, args.input_size) == (f"CIFAR{classes}", "ck.pth", 224)
    assert args.batch_size * 4 == 768 and args.opt == "sgd"


def test_multinode_script_uses_a_rendezvous_endpoint(tmp_path):
    variables = {"DATA": "/d", "OUTPUT": "o", "NNODES": "2", "MASTER_ADDR": "node0", "NGPUS": "4"}
    launcher, args = RECIPES["deit"].launch(tmp_path, "multinode.sh", **variables)
    assert "--nnodes=2" in launcher and "--rdzv-endpoint=node0:29500" in launcher
    assert args.batch_size * 2 * 4 == 1024 and args.auto_resume


# LV-ViT


def test_label_script_uses_nfnet_f6_at_576_px(tmp_path):
    script, python = RECIPES["lvvit"].run / "generate_labels.sh", str(tmp_path / "bin" / "python")

    def label_args(**variables):
        (call,) = recorded_calls(script, tmp_path, stub="python", PYTHON=python, DATA="/d", LABELS="/l", **variables)
        return generate_label.build_parser().parse_args(split_at(call, "ToE/lvvit/generate_label.py")[1])

    args = label_args()
    assert (args.data_dir, args.output, args.model, args.img_size) == ("/d", "/l", "dm_nfnet_f6", 576)
    assert args.pretrained and not args.checkpoint and args.crop_pct == 1.0  # the central square, as upstream
    args = label_args(CHECKPOINT="w.pth")
    assert args.checkpoint == "w.pth" and not args.pretrained


# EfficientTrain


@pytest.mark.parametrize("size", RECIPES["efficienttrain"].settings)
def test_efficienttrain_scripts_plan_the_papers_stages(tmp_path, size):
    recipe = RECIPES["efficienttrain"]
    _, args = recipe.launch(tmp_path, recipe.script(size))
    stages = plan_stages(args.epochs, (160, 160, 160, 192, 224), args.final_bs, args.num_gpus, args.effective_bs)
    assert [(s.batch_size, s.update_freq) for s in stages] == [(512, 1)] * 4 + [(256, 2)]


def test_gpu_count_and_extra_flags_pass_through(tmp_path):
    recipe = RECIPES["efficienttrain"]
    launcher, args = recipe.launch(tmp_path, "imagenet_small_run1.sh", "--final_bs", "128", DATA="/d", NGPUS="4")
    assert launcher == ["--nproc_per_node=4"] and (args.num_gpus, args.final_bs) == (4, 128)


def test_demo_script_makes_the_demo_data_then_runs_five_small_stages(tmp_path):
    demo = RECIPES["efficienttrain"].run / "demo.sh"
    make_data, train = recorded_calls(demo, tmp_path, stub="python", DATA="d", OUTPUT="o")
    assert make_data == ["datasets/make_demo_data.py", "--out", "d"]
    args = et_training.parse_args(split_at(train, "ToE/EfficientTrain/ET_training.py")[1])
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
