"""ToE/YOLOS/main.py end to end on tiny generated COCO data: train with ToE, resume, evaluate, report,
load an upstream YOLOS checkpoint, the demo script killed and resumed, and torchrun with 2 processes."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, assert_one_line_error, detection_demo_generator, killed_before_epoch, run_cli
from test_distributed import free_port

from toe.engine import read_log, trainer
from toe.recipes import yolos

TINY_YOLOS = [
    "--backbone_name", "tiny", "--model-kwargs", "img_size=32", "patch_size=8", "embed_dim=32", "depth=3",
    "num_heads=2", "--det_token_num", "4", "--init_pe_size", "48", "48", "--mid_pe_size", "40", "40",
    "--eval_size", "48", "--aug-scale", "0.08", "--batch_size", "4", "--num_workers", "0", "--no-progress",
    "--device", "cpu", "--lr", "1e-3",
]  # fmt: skip
TOE_3_EPOCHS = ["--epochs", "3", "--toe", "--expansion-step", "0", "1", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """16 train + 6 val images of the detection demo data."""
    out = tmp_path_factory.mktemp("coco") / "shapes"
    detection_demo_generator().generate(out, train_images=16, val_images=6)
    return out


def yolos_run(capsys, data, output, *flags):
    return run_cli(yolos.main, [*TINY_YOLOS, "--coco_path", data, "--output_dir", output, *flags], capsys)


@pytest.fixture(scope="module")
def full_run(tiny_coco, tmp_path_factory):
    """3 epochs with ToE (stages 1, 2, 3 = 50%, 75%, 100% of the patch tokens), uninterrupted."""
    from toe.options import run_main

    output = tmp_path_factory.mktemp("yolos") / "full"
    run_main(yolos.main, [*TINY_YOLOS, *TOE_3_EPOCHS, "--coco_path", str(tiny_coco), "--output_dir", str(output)])
    return output


def test_training_logs_stages_tokens_and_coco_metrics(full_run):
    log = read_log(full_run)
    assert [r["epoch"] for r in log] == [0, 1, 2] and [r["toe_stage"] for r in log] == [1, 2, 3]
    for record in log:
        assert 0 <= record["test_ap"] <= 100 and 0 <= record["test_ap50"] <= 100
        assert {"test_loss", "test_loss_ce", "test_loss_giou", "test_class_error"} <= set(record)
        assert record["best_test_ap"] == max(r["test_ap"] for r in log[: record["epoch"] + 1])
    # stage 1 keeps about half of the patches, stage 3 all: [DET] (4) and class tokens are never dropped
    first, last = log[0], log[2]
    assert last["toe_tokens"] == last["full_tokens"]
    assert 5 + 0.4 * (first["full_tokens"] - 5) < first["toe_tokens"] < 5 + 0.55 * (first["full_tokens"] - 5)
    assert (full_run / "best_checkpoint.pth").is_file() and json.loads((full_run / "args.json").read_text())["toe"]


def test_resume_continues_bit_identically(full_run, tiny_coco, tmp_path, capsys):
    stopped = tmp_path / "stopped"
    with killed_before_epoch(2):  # stop before the last epoch
        assert yolos_run(capsys, tiny_coco, stopped, *TOE_3_EPOCHS)[0] == 130
    status, out, err = yolos_run(capsys, tiny_coco, stopped, *TOE_3_EPOCHS, "--auto-resume")
    assert status == 0, err
    assert "continuing at epoch 2" in out
    resumed, full = read_log(stopped), read_log(full_run)
    for key in ("train_loss", "train_lr", "test_ap", "toe_tokens"):
        assert [r[key] for r in resumed] == [r[key] for r in full]
    a = torch.load(full_run / "checkpoint.pth", weights_only=True)
    b = torch.load(stopped / "checkpoint.pth", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


COCO_KEYS = ("test_ap", "test_ap50", "test_ap75", "test_ar1", "test_ar10", "test_ar100")


def evaluate(data, checkpoint, *flags) -> dict:
    return yolos.main([*TINY_YOLOS, "--coco_path", str(data), "--eval", "--resume", str(checkpoint), *flags])


def test_eval_reproduces_the_logged_metrics_and_report_shows_them(full_run, tiny_coco, capsys):
    from toe.cli import main as toe_main

    metrics = evaluate(tiny_coco, full_run / "checkpoint.pth")
    last = read_log(full_run)[-1]
    assert all(metrics[key] == last[key] for key in (*COCO_KEYS, "test_loss", "test_loss_bbox"))
    assert f"COCO box AP on the 6 validation images: {last['test_ap']:.1f}" in capsys.readouterr().out
    status, out, err = run_cli(toe_main, ["report", full_run], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert any(line.split()[:2] == ["1", "0-0"] for line in lines) and "COCO box AP: final" in out
    analytic = [line.split()[-1] for line in lines if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert float(analytic[0].rstrip("x")) > float(analytic[1].rstrip("x")) > float(analytic[2].rstrip("x")) == 1.0


def test_eval_draws_the_predictions_and_the_figure_needs_eval(full_run, tiny_coco, tmp_path, capsys):
    figure = tmp_path / "predictions.png"
    flags = ["--eval", "--resume", full_run / "checkpoint.pth", "--predictions-figure", figure]
    status, out, err = yolos_run(capsys, tiny_coco, tmp_path / "eval", *flags)
    assert status == 0, err
    assert f"wrote {figure}: predictions on 6 validation images" in out
    assert figure.read_bytes().startswith(b"\x89PNG")
    status, _, err = yolos_run(capsys, tiny_coco, tmp_path / "train", "--predictions-figure", figure)
    assert_one_line_error(status, err, "--predictions-figure draws an evaluation's predictions: add --eval")
    missing = tmp_path / "no" / "p.png"
    status, _, err = yolos_run(capsys, tiny_coco, tmp_path / "x", *flags[:3], "--predictions-figure", missing)
    assert_one_line_error(status, err, f"--predictions-figure {missing}: folder {missing.parent} does not exist")


def test_eval_loads_an_upstream_yolos_checkpoint(full_run, tiny_coco, tmp_path, capsys):
    """Upstream YOLOS saves its argparse Namespace and optimizer next to the weights (same names as ours)."""
    ours = torch.load(full_run / "checkpoint.pth", weights_only=True)
    upstream = tmp_path / "yolos_ti.pth"
    torch.save({"model": ours["model"], "optimizer": {}, "epoch": 2, "args": argparse.Namespace(lr=5e-5)}, upstream)
    metrics = evaluate(tiny_coco, upstream)
    assert all(metrics[key] == read_log(full_run)[-1][key] for key in COCO_KEYS)
    status, _, err = run_cli(
        yolos.main,
        [*TINY_YOLOS, "--det_token_num", "5", "--coco_path", tiny_coco, "--eval", "--resume", upstream],
        capsys,
    )
    assert status == 2 and "does not fit the detector" in err and len(err.strip().splitlines()) == 1


def test_resume_refuses_other_flags_and_eval_needs_weights(full_run, tiny_coco, tmp_path, capsys):
    """Resuming with another loss weight is refused, naming the flag as YOLOS spells it, and leaves the run
    as it was; --eval with nothing to evaluate is refused too."""
    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    before = (copy / "log.txt").read_text()
    status, _, err = yolos_run(capsys, tiny_coco, copy, *TOE_3_EPOCHS, "--auto-resume", "--eos_coef", "0.2")
    assert_one_line_error(status, err, "--eos_coef")
    assert (copy / "log.txt").read_text() == before
    status, _, err = yolos_run(capsys, tiny_coco, tmp_path / "empty", "--eval", "--auto-resume")
    assert_one_line_error(status, err, "--eval needs weights")


def test_the_libraries_errors_name_flags_as_yolos_spells_them(tiny_coco, tmp_path, capsys):
    """The data loader and the ToE schedule name --batch-size and initialization_keep_rate; a YOLOS user reads
    the flags typed: --batch_size, --initialization-keep-rate."""
    status, _, err = yolos_run(capsys, tiny_coco, tmp_path / "a", "--batch_size", "64")
    assert_one_line_error(status, err, "--batch_size 64 is larger than the 16 training images")
    status, _, err = yolos_run(capsys, tiny_coco, tmp_path / "b", *TOE_3_EPOCHS, "--initialization-keep-rate", "0.01")
    assert_one_line_error(status, err, "--initialization-keep-rate 0.01 of")


def test_out_of_memory_names_the_flags_yolos_has(tiny_coco, tmp_path, capsys, monkeypatch):
    def out_of_memory(run, epoch, **options):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train_one_epoch", out_of_memory)
    status, _, err = yolos_run(capsys, tiny_coco, tmp_path / "oom")
    assert_one_line_error(status, err, "out of memory", "(--batch_size)", "(--amp-dtype bf16)")
    assert "accum" not in err  # YOLOS has no gradient accumulation


@pytest.mark.slow
def test_demo_script_killed_and_resumed(tiny_coco, tmp_path):
    """demo.sh on the tiny data with a tiny backbone checkpoint: killed in epoch 1 of its ToE run, run again,
    it resumes, trains the baseline, draws the ToE model's predictions and ends with the ToE run's report and
    both runs side by side (AP50 and AP of each)."""
    import timm

    backbone = tmp_path / "deit.pth"
    torch.save(
        {"model": timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
                                     embed_dim=64, depth=4, num_heads=2).state_dict()},
        backbone,
    )  # fmt: skip
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DATA": str(tiny_coco),
        "BACKBONE": str(backbone),
        "OUTPUT": str(tmp_path / "demo"),
        "EPOCHS": "3",
        "OMP_NUM_THREADS": "1",
    }
    demo = ROOT / "ToE/YOLOS/run/demo.sh"
    command = ["bash", str(demo), "--batch_size", "4"]
    killed = subprocess.run(
        command, env={**env, "TOE_FAILPOINT": "train-step:6"}, capture_output=True, text=True, timeout=600
    )
    assert killed.returncode != 0
    assert [r["epoch"] for r in read_log(tmp_path / "demo" / "yolos_toe")] == [0]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "continuing at epoch 1" in done.stdout
    toe_log, baseline_log = (read_log(tmp_path / "demo" / name) for name in ("yolos_toe", "yolos"))
    assert [r["toe_stage"] for r in toe_log] == [1, 2, 3] and [r["epoch"] for r in baseline_log] == [0, 1, 2]
    assert all(r.get("toe_stage") is None for r in baseline_log)
    assert "speedup vs full-token" in done.stdout and "COCO box AP: final" in done.stdout
    lines = done.stdout.splitlines()
    side_by_side = lines[next(i for i, line in enumerate(lines) if line.startswith("run ") and "AP50" in line) :]
    assert side_by_side[1].split()[1:3] == ["off", f"{baseline_log[-1]['test_ap50']:.2f}%"]
    assert side_by_side[2].split()[1:3] == ["on", f"{toe_log[-1]['test_ap50']:.2f}%"]
    assert (tmp_path / "demo" / "predictions.png").stat().st_size > 0
    bad = subprocess.run(command, env={**env, "EPOCHS": "2"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "EPOCHS must be a whole number of at least 3" in bad.stderr


@pytest.mark.slow
def test_torchrun_two_processes_train_and_evaluate_every_image_once(tiny_coco, tmp_path):
    output = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), ROOT / "ToE" / "YOLOS" / "main.py", *TINY_YOLOS, "--batch_size", "2",
            "--epochs", "2", "--expansion-step", "0", "1", "--keep-rate", "0.5", "1.0", "--coco_path", tiny_coco,
            "--output_dir", output,
        ],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    log = read_log(output)
    assert [r["epoch"] for r in log] == [0, 1] and all(r["replicas_in_sync"] for r in log)
    # the 2-process evaluation (a shard each, gathered, each image once) equals one process evaluating all
    metrics = evaluate(tiny_coco, output / "checkpoint.pth")
    assert all(metrics[key] == log[-1][key] for key in COCO_KEYS)


def test_odd_images_train_and_a_missing_one_is_named(tiny_coco, tmp_path, capsys):
    """RGBA, greyscale and tiny (3 x 3 px, boxes clipped away) images train; a listed image that is missing is
    one line naming it, with --skip-corrupt as the way out."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "coco"
    shutil.copytree(tiny_coco, data)
    images = sorted((data / "train2017").iterdir())
    Image.fromarray(np.full((60, 70, 4), 200, np.uint8)).save(images[0])  # RGBA
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(images[1])  # greyscale
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(images[2])  # tiny
    status, out, err = yolos_run(capsys, data, tmp_path / "odd", "--epochs", "1")
    assert status == 0, err
    images[3].unlink()
    status, _, err = yolos_run(capsys, data, tmp_path / "missing", "--epochs", "1")
    assert_one_line_error(status, err, f"cannot read image {images[3]}", "FileNotFoundError", "--skip-corrupt")


@pytest.mark.slow
def test_a_sigterm_stops_with_a_mid_epoch_checkpoint_and_the_rerun_ends_bit_for_bit(full_run, tiny_coco, tmp_path):
    """A scheduler's SIGTERM after the 6th update (in epoch 1): exit 143 with a mid-epoch checkpoint;
    --auto-resume continues from that step and ends with the uninterrupted run's weights and log."""
    output = tmp_path / "preempted"
    command = [sys.executable, ROOT / "ToE" / "YOLOS" / "main.py", *TINY_YOLOS, *TOE_3_EPOCHS]
    command += ["--coco_path", tiny_coco, "--output_dir", output]
    env = {**os.environ, "TOE_FAILPOINT": "train-step:6", "TOE_FAILPOINT_SIGNAL": "SIGTERM"}
    stopped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143, stopped.stderr
    assert "Traceback" not in stopped.stderr and "pre-empted" in stopped.stdout + stopped.stderr
    resumed = subprocess.run([*command, "--auto-resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing at epoch 1, step" in resumed.stdout
    a = torch.load(full_run / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(output / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("train_loss", "train_lr", "test_ap", "toe_tokens")
    assert [[r[k] for k in keys] for r in read_log(output)] == [[r[k] for k in keys] for r in read_log(full_run)]
