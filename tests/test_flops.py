"""Analytic cost of ToE schedules: the spec's figures, a flop-counter cross-check, the `toe flops` CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from toe import ToESchedule, apply_toe
from toe.cli import main
from toe.flops import forward_macs, schedule_costs, schedule_speedup, selection_macs, vit_shape
from toe.options import run_main

DEIT = ToESchedule([0, 100, 200], [0.5, 0.75, 1.0], 0.25, 2)


def meta_shape(name: str, **kwargs):
    with torch.device("meta"):
        return vit_shape(timm.create_model(name, **kwargs))


def test_deit_small_stage_costs_and_speedup():
    shape = meta_shape("deit_small_patch16_224")
    costs = schedule_costs(shape, DEIT, 300)
    assert [(c.stage, c.first_epoch, c.end_epoch, c.tokens) for c in costs] == [
        (1, 0, 100, 99),
        (2, 100, 200, 148),
        (3, 200, 300, 197),
    ]
    assert [round(c.macs / 1e9, 2) for c in costs] == [2.45, 3.50, 4.60]
    assert round(schedule_speedup(shape, costs), 2) == 1.31


@pytest.mark.parametrize(
    ("name", "rates", "r0", "speedup"),
    [
        ("deit_tiny_patch16_224", (0.5, 0.75, 1.0), 0.25, 1.32),
        ("deit_base_patch16_224", (0.5, 0.75, 1.0), 0.25, 1.30),
        ("deit_small_patch16_224", (0.6, 0.8, 1.0), 0.3, 1.24),
        ("deit_small_patch16_224", (0.4, 0.7, 1.0), 0.2, 1.40),
    ],
)
def test_headline_speedups(name, rates, r0, speedup):
    shape = meta_shape(name)
    costs = schedule_costs(shape, ToESchedule([0, 100, 200], rates, r0, 2), 300)
    assert round(schedule_speedup(shape, costs), 2) == speedup


def test_warm_up_stage_and_short_runs():
    shape = meta_shape("deit_small_patch16_224")
    costs = schedule_costs(shape, ToESchedule([5, 100, 200], [0.5, 0.75, 1.0], 0.25, 2), 150)
    assert [(c.stage, c.first_epoch, c.end_epoch) for c in costs] == [(0, 0, 5), (1, 5, 100), (2, 100, 150)]
    assert costs[0].macs == forward_macs(shape)


@pytest.mark.parametrize("epoch", [0, 1, 2])
@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_analytic_count_matches_torch_flop_counter(name, epoch):
    timm.layers.set_fused_attn(False)  # explicit matmuls so that the counter sees attention
    try:
        model = timm.create_model(name, img_size=64, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=10)
        apply_toe(model).token_select.update_current_stage(epoch * 100)
        model.train()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, 64, 64))
    finally:
        timm.layers.set_fused_attn(True)
    shape = vit_shape(model)
    if model.token_select.last_index is None:
        expected = forward_macs(shape)
    else:
        kept = model.token_select.last_index.shape[1] - shape.num_prefix_tokens
        expected = forward_macs(shape, kept) + selection_macs(shape, kept)
    assert counter.get_total_flops() / 2 == pytest.approx(expected, rel=1e-9)


def run_toe(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``toe ARGS`` in this process: (exit status, stdout, stderr)."""
    try:
        run_main(main, list(args))
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.slow
def test_toe_console_script_prints_the_deit_small_table():
    result = subprocess.run(
        [sys.executable, "-m", "toe.cli", "flops", "--model", "deit_small_patch16_224", "--epochs", "300"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[:6] for row in rows] == [
        ["1", "0-99", "98", "of", "196", "2.45"],
        ["2", "100-199", "147", "of", "196", "3.50"],
        ["3", "200-299", "196", "of", "196", "4.60"],
    ]
    assert "1.31x less compute" in result.stdout


def test_toe_flops_for_a_plain_vit_shape(capsys):
    status, out, err = run_toe(
        capsys,
        "flops",
        "--embed-dim",
        "384",
        "--depth",
        "12",
        "--patch-size",
        "16",
        "--input-size",
        "224",
        "--keep-rate",
        "0.6",
        "0.8",
        "1.0",
        "--initialization-keep-rate",
        "0.3",
    )
    assert status == 0, err
    assert "1.24x less compute" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_model"], "--model no_such_model is not a timm model"),
        (["--keep-rate", "0.5", "0.75"], "same number of values"),
        (["--keep-rate", "0.9", "0.75", "1"], "strictly increasing"),
        (["--epochs", "0"], "argument --epochs: must be at least 1"),
        (["--distance", "cosin"], "--distance"),
        (["--input-size", "0"], "argument --input-size: must be at least 1, got 0"),
        (["--embed-dim", "64", "--depth", "0"], "argument --depth: must be at least 1, got 0"),
        (["--embed-dim", "-1"], "argument --embed-dim: must be at least 1, got -1"),
        (["--embed-dim", "64", "--mlp-ratio", "0"], "argument --mlp-ratio: must be above 0, got 0"),
        (["--embed-dim", "64", "--depth", "1"], "at least 2 transformer blocks"),
        (["--model", "resnet18"], "--model resnet18 cannot train with ToE: ToE supports timm VisionTransformer"),
        (["--input-size", "30", "--patch-size", "4"], "--input-size 30 is not divisible by the patch size 4"),
        (["--input-size", "16"], "1 patch token gives 0 seeds"),
        (["--initialization-keep-rate", "0.001"], "196 patch tokens gives 0 seeds; raise it to at least 0.005102"),
        (["--embed-dim", "64", "--model-kwargs", "depth=2"], "--model-kwargs applies to --model"),
    ],
)
def test_toe_flops_bad_input_is_one_clear_line(capsys, args, message):
    status, _, err = run_toe(capsys, "flops", *args)
    assert status == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_toe_flops_takes_the_patch_size_and_model_kwargs_of_a_timm_model(capsys):
    """The demo's model (deit_tiny, 32 px, 4 px patches, depth 6) from its --model flags."""
    flags = ["--model", "deit_tiny_patch16_224", "--input-size", "32", "--patch-size", "4", "--model-kwargs", "depth=6"]
    status, out, err = run_toe(capsys, "flops", *flags, "--epochs", "3", "--expansion-step", "0", "1", "2")
    assert status == 0, err
    assert out.startswith("deit_tiny_patch16_224: 64 patch tokens + 1 prefix, 6 blocks of width 192")
    shape = meta_shape("deit_tiny_patch16_224", img_size=32, patch_size=4, depth=6)
    costs = schedule_costs(shape, ToESchedule([0, 1, 2], [0.5, 0.75, 1.0], 0.25, 2), 3)
    assert f"{schedule_speedup(shape, costs):.2f}x less compute" in out
    assert [line.split()[2:5] for line in out.splitlines() if line.strip()[:1].isdigit()] == [
        ["32", "of", "64"],
        ["48", "of", "64"],
        ["64", "of", "64"],
    ]


@pytest.mark.slow  # over 8 s: two fresh Python processes
def test_python_dash_m_toe_is_the_toe_command(capsys):
    """ncurses ships its own `toe` program, often first on PATH: `python -m toe` always reaches ours."""
    result = subprocess.run(
        [sys.executable, "-m", "toe", "flops", "--model", "deit_tiny_patch16_224"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    status, out, _ = run_toe(capsys, "flops", "--model", "deit_tiny_patch16_224")
    assert status == 0 and result.stdout == out
    bare = subprocess.run([sys.executable, "-m", "toe"], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and bare.stderr.startswith("toe: error: the following arguments are required")


def test_stages_after_the_end_of_the_run_are_named(capsys, tiny_data, tmp_path):
    """The paper's stages 0 100 200 over 100 epochs never reach full tokens: toe flops and the recipes say so."""
    from helpers import TINY_DEIT, run_cli

    from toe.recipes import deit
    from toe.schedule import ToESchedule

    schedule = ToESchedule([0, 100, 200], [0.5, 0.75, 1.0], 0.25, 2)
    assert schedule.unreached_warning(300) is None
    assert "stage 2 (epoch 100), stage 3 (epoch 200)" in schedule.unreached_warning(100)
    assert "ends in stage 1 (keep rate 0.5)" in schedule.unreached_warning(100)
    status, out, err = run_cli(main, ["flops", "--model", "deit_small_patch16_224", "--epochs", "100"], capsys)
    assert status == 0, err
    assert "warning: stage 2 (epoch 100), stage 3 (epoch 200) of --expansion-step 0 100 200" in out
    argv = [*TINY_DEIT, "--epochs", "2", "--expansion-step", "0", "1", "5", "--data-path", tiny_data]
    status, out, err = run_cli(deit.main, [*argv, "--output_dir", tmp_path / "run"], capsys)
    assert status == 0, err
    assert "warning: stage 3 (epoch 5) of --expansion-step 0 1 5 start after the run's 2 epochs" in out
