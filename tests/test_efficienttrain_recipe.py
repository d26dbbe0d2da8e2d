"""EfficientTrain + ToE end to end on tiny generated images: 5 stages at 16/16/16/24/32 px (CPU, in-process CLI)."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import signal
import subprocess
import sys
from collections import Counter

import pytest
import torch
from helpers import ROOT, TINY_ET_MODEL, assert_one_line_error, read_log, run_cli

from toe.cli import main as toe_main
from toe.engine import failpoints, trainer
from toe.engine.preemption import REQUEUE_STATUS
from toe.options import run_main
from toe.recipes import efficienttrain, et_training

# a 3-block DeiT of width 32 with 4 px patches: 16 / 36 / 64 patches at 16 / 24 / 32 px
TINY_MODEL = TINY_ET_MODEL
TINY_RUN = "--num_workers 0 --no-progress --device cpu --warmup_epochs 1 --seed 3".split()
# stages at 16/16/16/24/32 px; 16 images per update: batch 16 x 1 below 32 px, 8 x 2 at 32 px
TINY_ET = [
    *TINY_MODEL,
    *TINY_RUN,
    *"--input_size 32 --input_sizes 16 16 16 24 32 --final_bs 8 --effective_bs 16".split(),
]
# ten epochs, two per stage; ToE stages from epochs 0/3/7 (the paper's 0/100/200 of 300, scaled)
TEN_EPOCHS = ["--epochs", "10", "--expansion-step", "0", "3", "7"]


def et_run(capsys, data, output, *extra):
    return run_cli(et_training.main, [*TINY_ET, "--data_path", data, "--output_dir", output, *extra], capsys)


def checkpoint(path):
    return torch.load(path / "checkpoint.pth", map_location="cpu", weights_only=True)


def out_of_memory() -> Exception:
    return torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")


def stop_at(monkeypatch, epoch, make_error=KeyboardInterrupt, times=None):
    """Make the engine raise ``make_error()`` when it starts training ``epoch`` (``times`` times; None: always)."""
    real = trainer.train_one_epoch
    left = [times]
    stop_epoch = epoch

    def train_one_epoch(run, epoch, **options):
        if epoch == stop_epoch and left[0] != 0:
            left[0] = None if left[0] is None else left[0] - 1
            raise make_error()
        return real(run, epoch, **options)

    monkeypatch.setattr(trainer, "train_one_epoch", train_one_epoch)


@pytest.fixture(scope="module")
def full_run(tiny_data, tmp_path_factory):
    """An uninterrupted 10-epoch run through the five stages with ToE; (output folder, stdout)."""
    output = tmp_path_factory.mktemp("et_full")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        run_main(et_training.main, [*TINY_ET, *TEN_EPOCHS, "--data_path", str(tiny_data), "--output_dir", str(output)])
    return output, out.getvalue()


def test_five_stages_change_resolution_augmentation_and_toe_tokens(full_run):
    output, out = full_run
    log = read_log(output)
    assert [r["epoch"] for r in log] == list(range(10))
    assert [r["input_size"] for r in log] == [16] * 6 + [24] * 2 + [32] * 2
    # ToE (keep .6/.8/1, seeds .3) on 4x4, 6x6 and 8x8 patches, plus the class token: 8, 11 of 16; 27 of 36
    assert [r["toe_tokens"] for r in log] == [9, 9, 9, 12, 12, 12, 28, 37, 65, 65]
    assert [r["toe_stage"] for r in log] == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert all(math.isfinite(r["train_loss"]) and 0 <= r["test_acc1"] <= 100 for r in log)
    assert checkpoint(output)["model"]["pos_embed"].shape == (1, 65, 32)
    for magnitude in (1, 3, 5, 7, 9):
        assert f"rand-m{magnitude}-mstd0.5-inc1" in out
    assert out.count("loaded at 32 px, Fourier-cropped on the device") == 4
    assert "loaded at 32 px, no crop" in out
    assert "position embedding resampled from 4x4 to 6x6 (with the optimizer's exp_avg, exp_avg_sq)" in out
    assert "position embedding resampled from 6x6 to 8x8" in out


def test_report_compares_stages_at_the_same_input_size(full_run, capsys):
    output, _ = full_run
    status, report, err = run_cli(toe_main, ["report", output], capsys)
    assert status == 0, err
    log = read_log(output)
    rows = [line.split() for line in report.splitlines() if line.strip()[:1].isdigit()]
    # (input size, ToE stage) groups; only 24 px has a full-token stage beside a reduced one
    assert [row[:6] for row in rows] == [
        ["16", "1", "0-2", "8", "of", "16"],
        ["16", "2", "3-5", "11", "of", "16"],
        ["24", "2", "6-6", "27", "of", "36"],
        ["24", "3", "7-7", "36", "of", "36"],
        ["32", "3", "8-9", "64", "of", "64"],
    ]
    speedup_24 = log[7]["train_compute_time"] / log[6]["train_compute_time"]
    assert [row[8] for row in rows] == ["-", "-", f"{speedup_24:.2f}x", "1.00x", "-"]
    assert [row[9] for row in rows][3:] == ["1.00x", "1.00x"] and all(float(row[9][:-1]) > 1 for row in rows[:3])
    assert "- measured (no full-token stage to compare with yet)" in report


def test_the_plan_is_printed_before_training(full_run):
    _, out = full_run
    table = out[out.index("stage     epochs") : out.index("stage 1/5")].splitlines()
    assert [line.split()[:4] for line in table[1:]] == [
        ["1", "0-1", "16", "m1"],
        ["2", "2-3", "16", "m3"],
        ["3", "4-5", "16", "m5"],
        ["4", "6-7", "24", "m7"],
        ["5", "8-9", "32", "m9"],
    ]
    assert table[2].endswith("16 x 1 x 1  8 of 16 (2-2), 11 of 16 (3-3)")
    assert table[4].endswith("16 x 1 x 1  27 of 36 (6-6), 36 of 36 (7-7)")
    assert table[5].endswith("8 x 2 x 1  64 of 64")  # final size: half the batch, twice the accumulation


def test_the_learning_rate_follows_one_per_iteration_cosine_over_the_whole_run(full_run):
    """80 images, 16 per update: 5 updates per epoch in every stage (batch 16 x 1, then 8 x 2)."""
    output, _ = full_run
    lr, min_lr, warmup, total = 4e-3, 1e-6, 5, 50

    def expected(t):
        if t < warmup:
            return lr * t / warmup
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))

    logged = [r["train_lr"] for r in read_log(output)]  # the LR after each epoch's last update
    assert logged == pytest.approx([expected(5 * (epoch + 1)) for epoch in range(10)], rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_stop_in_the_middle_of_stage_3_then_rerun_gives_the_uninterrupted_weights(
    full_run, tiny_data, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "stopped"
    stop_at(monkeypatch, epoch=5)  # stage 3 holds epochs 4 and 5
    status, out, _ = et_run(capsys, tiny_data, output, *TEN_EPOCHS)
    assert status == 130
    assert [r["epoch"] for r in read_log(output)] == [0, 1, 2, 3, 4]
    monkeypatch.undo()

    status, out, err = et_run(capsys, tiny_data, output, *TEN_EPOCHS)
    assert status == 0, err
    assert out.count("already done") == 2  # stages 1 and 2
    assert "continuing at epoch 5" in out
    full_log, resumed_log = read_log(full_run[0]), read_log(output)
    assert [r["epoch"] for r in resumed_log] == list(range(10))
    for key in ("train_loss", "train_lr", "test_acc1", "toe_tokens", "input_size"):
        assert [r[key] for r in resumed_log] == [r[key] for r in full_log], key
    full_state, resumed_state = checkpoint(full_run[0]), checkpoint(output)
    for name, tensor in full_state["model"].items():
        assert torch.equal(tensor, resumed_state["model"][name]), name

    status, out, err = et_run(capsys, tiny_data, output, *TEN_EPOCHS)  # a finished run: nothing to do
    assert status == 0 and out.count("already done") == 5


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_resumes_with_the_right_learning_rate(
    full_run, tiny_data, tmp_path, capsys, monkeypatch
):
    """--save-every-steps 2, stopped after the 2nd update of epoch 5: the resumed run ends bit for bit as the
    uninterrupted one (the per-iteration LR continues from the 3rd update of that epoch)."""
    real_save = trainer._save_mid_epoch

    def save_then_stop(run, epoch, stats):
        real_save(run, epoch, stats)
        if epoch == 5 and stats.steps == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_save_mid_epoch", save_then_stop)
    output = tmp_path / "stopped"
    status, _, _ = et_run(capsys, tiny_data, output, *TEN_EPOCHS, "--save-every-steps", "2")
    assert status == 130
    assert checkpoint(output)["partial"]["epoch"] == 5
    monkeypatch.undo()
    status, out, err = et_run(capsys, tiny_data, output, *TEN_EPOCHS, "--save-every-steps", "2")
    assert status == 0, err
    assert "continuing at epoch 5" in out
    full_log, resumed_log = read_log(full_run[0]), read_log(output)
    assert [r["train_lr"] for r in resumed_log] == [r["train_lr"] for r in full_log]
    assert [r["train_loss"] for r in resumed_log] == [r["train_loss"] for r in full_log]
    full_state, resumed_state = checkpoint(full_run[0]), checkpoint(output)
    for name, tensor in full_state["model"].items():
        assert torch.equal(tensor, resumed_state["model"][name]), name


@pytest.mark.slow
def test_a_sigterm_in_stage_3_stops_with_a_checkpoint_and_the_rerun_ends_bit_for_bit(
    full_run, tiny_data, tmp_path, capsys, monkeypatch
):
    """A scheduler's SIGTERM right after the 2nd update of epoch 5 (5 updates per epoch: the 27th update): the
    stage finishes its 3rd update, writes a mid-epoch checkpoint and the driver exits 143 (requeue); the rerun
    skips stages 1-2 and ends as the uninterrupted run."""
    monkeypatch.setattr(failpoints, "_hits", Counter())
    monkeypatch.setenv("TOE_FAILPOINT", "train-step:27")
    monkeypatch.setenv("TOE_FAILPOINT_SIGNAL", "SIGTERM")
    output, handler = tmp_path / "stopped", signal.getsignal(signal.SIGTERM)
    status, out, err = et_run(capsys, tiny_data, output, *TEN_EPOCHS)
    assert status == REQUEUE_STATUS, err
    assert "pre-empted (SIGTERM) at epoch 5, step 3; checkpoint.pth holds the epoch so far" in out
    assert "stage 4/5" not in out and [r["epoch"] for r in read_log(output)] == [0, 1, 2, 3, 4]
    assert checkpoint(output)["partial"]["epoch"] == 5 and checkpoint(output)["partial"]["stats"]["steps"] == 3
    assert signal.getsignal(signal.SIGTERM) is handler  # the engine's handler lives only while training
    monkeypatch.delenv("TOE_FAILPOINT")

    status, out, err = et_run(capsys, tiny_data, output, *TEN_EPOCHS)
    assert status == 0, err
    assert out.count("already done") == 2 and "continuing at epoch 5, step 3" in out
    full_log, resumed_log = read_log(full_run[0]), read_log(output)
    for key in ("train_loss", "train_lr", "test_acc1", "toe_tokens", "input_size"):
        assert [r[key] for r in resumed_log] == [r[key] for r in full_log], key
    full_state, resumed_state = checkpoint(full_run[0]), checkpoint(output)
    for name, tensor in full_state["model"].items():
        assert torch.equal(tensor, resumed_state["model"][name]), name


def test_main_py_evaluates_a_checkpoint_at_its_size_and_at_a_smaller_one(full_run, tiny_data, capsys):
    output, _ = full_run
    common = [*TINY_MODEL, *TINY_RUN, "--data_path", tiny_data, "--eval", "true", "--resume", output / "checkpoint.pth"]
    status, out, err = run_cli(efficienttrain.main, [*common, "--input_size", "32", "--load_size", "32"], capsys)
    assert status == 0, err
    assert f"40 test images at 32 px: {read_log(output)[-1]['test_acc1']:.2f}%" in out
    # at 16 px: images loaded at 32 and Fourier-cropped, the position embedding resampled to 4x4
    status, out, err = run_cli(efficienttrain.main, [*common, "--input_size", "16", "--load_size", "32"], capsys)
    assert status == 0, err
    assert "resampled from 8x8 to 4x4" in out and "40 test images at 16 px" in out


@pytest.mark.slow
def test_a_stage_out_of_memory_is_retried_with_half_the_batch(tiny_data, tmp_path, capsys, monkeypatch):
    """80 images, 12 per update: 6 updates per epoch at batch 12 x 1 (stages 1-4), at 6 x 2 (13 batches, the
    planned stage 5) and at 3 x 4 (26 batches, the retry): as upstream, the batches of a short last accumulation
    group are left out (len(loader) // update_freq updates). The LR follows the epochs all the same."""
    output = tmp_path / "oom"
    stop_at(monkeypatch, epoch=4, make_error=out_of_memory, times=1)  # the last of 5 one-epoch stages
    flags = "--epochs 5 --final_bs 6 --effective_bs 12 --mixup 0 --cutmix 0 --expansion-step 0 2 4".split()
    status, out, err = et_run(capsys, tiny_data, output, *flags)
    assert status == 0, err
    assert "stage 5/5: epochs 4-4 at 32 px, rand-m9-mstd0.5-inc1, batch 6 x 2 x 1" in out
    assert "stage 5 ran out of GPU memory: retrying with half the batch, twice the accumulation" in out
    assert "stage 5/5: epochs 4-4 at 32 px, rand-m9-mstd0.5-inc1, batch 3 x 4 x 1" in out
    log = read_log(output)
    assert [r["epoch"] for r in log] == [0, 1, 2, 3, 4]
    assert [r["train_images"] for r in log] == [72] * 5  # 6 updates of 12 images: batches of 12, then 6 x 4 of 3
    stage_flags = json.loads((output / "args.json").read_text())
    assert (stage_flags["batch_size"], stage_flags["update_freq"]) == (3, 4)
    # warm-up over epoch 0, cosine to epoch 5: after epoch 3 at 3/4 of the cosine, after epoch 4 at its end
    assert log[3]["train_lr"] == pytest.approx(1e-6 + 0.5 * (4e-3 - 1e-6) * (1 + math.cos(0.75 * math.pi)))
    assert log[4]["train_lr"] == pytest.approx(1e-6)

    stop_at(monkeypatch, epoch=0, make_error=out_of_memory)  # out of memory twice: give up clearly
    status, _, err = et_run(capsys, tiny_data, tmp_path / "oom_twice", "--epochs", "5")
    assert_one_line_error(status, err, "stage 1 ran out of GPU memory at batch 8 per process", "--final_bs")


def test_a_finished_stage_is_freed_without_the_garbage_collector(tiny_data, tmp_path):
    """No reference cycle in a run (the ToE hook holds no model): when a stage returns, its model, EMA and
    optimizer are gone by reference counting alone, so the next stage needs no gc.collect()."""
    kinds = (torch.nn.Module, torch.optim.Optimizer)

    def alive() -> set[int]:
        return {id(o) for o in gc.get_objects() if isinstance(o, kinds)}

    gc.collect()
    gc.disable()
    try:
        before = alive()
        flags = [*TINY_MODEL, *TINY_RUN, "--epochs", "2", "--input_size", "16", "--load_size", "32", "--toe"]
        flags += ["--batch_size", "16", "--model_ema", "true", "--data_path", str(tiny_data)]
        run_main(efficienttrain.main, [*flags, "--output_dir", str(tmp_path / "stage")])
        assert alive() - before == set()
    finally:
        gc.enable()


def test_downsample_alternative_loads_small_images_without_a_crop(tiny_data, tmp_path, capsys, monkeypatch):
    seen = []
    real = efficienttrain.FourierCrop.__call__
    monkeypatch.setattr(efficienttrain.FourierCrop, "__call__", lambda self, *a: seen.append(1) or real(self, *a))
    one_epoch = "--epochs 1 --warmup_epochs 0 --batch_size 16 --toe".split()
    flags = [*TINY_MODEL, *TINY_RUN, "--data_path", tiny_data, *one_epoch]
    status, out, err = run_cli(
        efficienttrain.main,
        [*flags, "--input_size", "16", "--load_size", "32", "--low_freq", "downsample", "--output_dir", tmp_path / "d"],
        capsys,
    )
    assert status == 0, err
    assert "loaded at 16 px, no crop" in out and not seen
    assert read_log(tmp_path / "d")[0]["toe_tokens"] == 1 + 8
    status, out, err = run_cli(
        efficienttrain.main, [*flags, "--input_size", "16", "--load_size", "32", "--output_dir", tmp_path / "f"], capsys
    )
    assert status == 0, err
    assert "loaded at 32 px, Fourier-cropped on the device" in out
    assert len(seen) == 5 + 2  # 5 training steps of 16 images, 2 eval batches of 24


def test_more_gpus_than_processes_restarts_under_torchrun(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []

    def execv(path, argv):
        calls.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(et_training.os, "execv", execv)
    status, _, err = et_run(capsys, tiny_data, tmp_path / "o", "--epochs", "5", "--num_gpus", "2")
    assert status == 0, err
    argv = calls[0]
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in argv
    assert argv[argv.index("-m", 3) + 1] == "toe.recipes.et_training"
    assert argv[-2:] == ["--num_gpus", "2"] and str(tiny_data) in argv

    monkeypatch.setenv("WORLD_SIZE", "1")
    status, _, err = et_run(capsys, tiny_data, tmp_path / "o", "--epochs", "5", "--num_gpus", "2")
    assert_one_line_error(status, err, "--num_gpus 2 but torchrun started 1 process(es)")


def test_bad_input_is_one_clear_line(tiny_data, tmp_path, capsys, full_run):
    sizes = ["--input_size", "32", "--input_sizes"]
    driver_cases = [
        ([*sizes, "16", "16", "16", "24"], ["--input_sizes", "expected 5 arguments"]),
        ([*sizes, "16", "24", "16", "24", "32"], ["--input_sizes", "non-decreasing"]),
        ([*sizes, "16", "16", "16", "24", "30"], ["--input_sizes must end with the final --input_size 32"]),
        (["--input_size", "30", "--input_sizes", "16", "16", "16", "24", "30"], ["30 is not divisible", "patch"]),
        ([*sizes, "4", "4", "4", "8", "32"], ["stage 1 at 4 px (--input_sizes): ToE would keep no patch token"]),
        (["--lr", "nan"], ["argument --lr: must be a finite number >= 0, got nan"]),
        (["--drop_path", "1.5"], ["argument --drop_path: must lie in [0, 1), got 1.5"]),
        (["--opt_betas", "0.9"], ["argument --opt_betas: expected 2 arguments"]),
        (["--final_bs", "7"], ["--final_bs 7 must be even"]),
        (["--effective_bs", "24"], ["--effective_bs 24 is not a multiple"]),
        (["--epochs", "3"], ["--epochs must be at least 5"]),
        (["--warmup_epochs", "10"], ["--warmup_epochs 10 must be below --epochs"]),
        (["--no-toe", "--keep-rate", "0.5", "1.0"], ["--no-toe cannot be combined"]),
        (["--keep-rate", "0.5", "1.0"], ["--expansion-step and --keep-rate"]),
        (["--model", "resnet10t", "--model-kwargs", "--toe"], ["--model resnet10t has no patch embedding"]),
        (["--model", "nonexistent_net"], ["--model nonexistent_net"]),
        (["--use_amp", "maybe"], ["--use_amp", "expected true or false"]),
        (["--model-kwargs", "img_size=64"], ["--model-kwargs img_size"]),
        (["--auto_resume", "false", "--output_dir", full_run[0]], ["already holds a run"]),
        ([*TEN_EPOCHS[2:], "--epochs", "12", "--output_dir", full_run[0]], ["other settings: --epochs 10 (now 12)"]),
    ]
    for extra, fragments in driver_cases:
        argv = [*TINY_ET, "--epochs", "5", "--data_path", tiny_data, "--output_dir", tmp_path / "bad", *extra]
        status, _, err = run_cli(et_training.main, argv, capsys)
        assert_one_line_error(status, err, *fragments)
    for extra, fragments in (
        (["--data_path", tmp_path / "missing"], ["--data_path", "missing does not exist"]),
        (["--output_dir", ""], ["--output_dir is required"]),
        (["--batch_size", "8"], ["unrecognized arguments: --batch_size 8"]),  # set per stage by the driver
    ):
        status, _, err = run_cli(
            et_training.main, [*TINY_ET, "--data_path", tiny_data, "--output_dir", "o", *extra], capsys
        )
        assert_one_line_error(status, err, *fragments)

    stage = [*TINY_MODEL, *TINY_RUN, "--data_path", tiny_data, "--output_dir", tmp_path / "stage", "--epochs", "4"]
    for extra, fragments in (
        (["--input_size", "32", "--load_size", "16"], ["--load_size 16 must not be below --input_size 32"]),
        (["--input_size", "18"], ["--input_size 18 is not divisible by the patch size 4"]),
        (["--end_epoch", "5"], ["--end_epoch must lie in [1, --epochs 4]"]),
        (["--batch_size", "15"], ["--batch_size 15 must be even"]),
        (["--eval", "true", "--input_size", "32"], ["--eval true needs a checkpoint"]),
        (["--data_set", "image_folder"], ["--eval_data_path"]),
        (["--input_size", "32", "--batch_size", "16", "--update_freq", "8"], ["--update_freq 8", "--batch_size 16"]),
        (["--input_size", "32", "--start_epoch", "4"], ["--start_epoch 4 leaves nothing to train"]),
        (["--input_size", "32", "--device", "foo"], ["argument --device: 'foo' is not a device"]),
    ):
        status, _, err = run_cli(efficienttrain.main, [*stage, *extra], capsys)
        assert_one_line_error(status, err, *fragments)


@pytest.mark.slow
def test_launcher_from_a_fresh_process_and_the_flags_in_help(tmp_path):
    """(ET_training.py runs from a fresh process in test_efficienttrain_distributed.py.)"""
    main_py = ROOT / "ToE" / "EfficientTrain" / "main.py"
    bad = subprocess.run([sys.executable, main_py, "--data_path", tmp_path / "nowhere"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: --data_path {tmp_path / 'nowhere'} does not exist"
    stage_help = efficienttrain.build_parser().format_help()
    for flag in ("--input_size", "--end_epoch", "--update_freq", "--load_size", "--low_freq", "--use_amp", "--aa"):
        assert flag in stage_help
    driver_help = et_training.build_parser().format_help()
    for flag in ("--final_bs", "--num_gpus", "--input_sizes", "--effective_bs", "--no-toe", "--keep-rate", "--lr"):
        assert flag in driver_help
    assert "--end_epoch" not in driver_help and "--batch_size" not in driver_help  # set per stage


def test_main_py_loads_at_224_and_crops_as_upstreams_base_input_size():
    """Upstream main.py --input_size 160 loads images at --base_input_size (224) and Fourier-crops them."""
    parse = efficienttrain.build_parser().parse_args
    assert efficienttrain.load_size_of(parse(["--input_size", "160"])) == 224
    assert efficienttrain.load_size_of(parse(["--input_size", "160", "--base_input_size", "192"])) == 192
    assert efficienttrain.load_size_of(parse(["--input_size", "32", "--load_size", "32"])) == 32
    assert efficienttrain.load_size_of(parse(["--input_size", "384"])) == 384  # never below the model's size


def test_a_stage_finds_its_checkpoint_before_building(full_run, tiny_data, capsys, monkeypatch):
    """A finished stage loads no data and builds no model; a changed plan is refused before any is loaded."""

    def no_data(*_):
        raise AssertionError("the stage loaded its data")

    monkeypatch.setattr(efficienttrain, "_datasets", no_data)
    status, out, err = et_run(capsys, tiny_data, full_run[0], *TEN_EPOCHS)
    assert status == 0 and out.count("already done") == 5, err
    status, _, err = et_run(capsys, tiny_data, full_run[0], *TEN_EPOCHS[2:], "--epochs", "12")
    assert_one_line_error(status, err, "--auto_resume", "other settings: --epochs 10 (now 12)")
