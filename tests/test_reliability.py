"""Kills, torn checkpoints, elastic restarts, NaN and fp16 overflow: no lost or corrupted work.

A run killed (SIGKILL, through the TOE_FAILPOINT fault injection) at any point and continued with
--auto-resume must end exactly where an uninterrupted run ends: same weights, EMA, optimizer moments,
LR schedule and log records (bitwise: on the CPU the run is deterministic, timings aside).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from helpers import LAYOUT_NOISE, ROOT, TINY_DEIT, assert_one_line_error, run_cli, tiny_vit

from toe.engine import losses
from toe.options import run_main
from toe.recipes import deit

FLAGS = [*TINY_DEIT, "--epochs", "3", "--toe", "--expansion-step", "0", "1", "2", "--seed", "11"]
TIMING = {"train_compute_time", "train_data_time", "epoch_time", "train_images_per_sec"}


def train(tiny_data, output, *extra):
    run_main(deit.main, [*FLAGS, "--data-path", str(tiny_data), "--output_dir", str(output), *extra])


def killed_run(tiny_data, output, failpoint, *extra) -> subprocess.CompletedProcess:
    """Run the recipe in a fresh process that SIGKILLs itself at ``failpoint``."""
    env = {**os.environ, "TOE_FAILPOINT": failpoint}
    return subprocess.run(
        [
            sys.executable,
            ROOT / "ToE" / "deit" / "main.py",
            *FLAGS,
            "--data-path",
            tiny_data,
            "--output_dir",
            output,
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def records(output):
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING}
        for line in (output / "log.txt").read_text().splitlines()
    ]


def assert_same_run(expected, actual):
    a = torch.load(expected / "checkpoint.pth", weights_only=True)
    b = torch.load(actual / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] and a["num_updates"] == b["num_updates"]
    for key in ("model", "model_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), f"optimizer {index}.{name}"
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert records(expected) == records(actual)


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_data, output)
    return output


@pytest.mark.slow
def test_kill_mid_epoch_then_auto_resume(tiny_data, tmp_path, uninterrupted, capsys):
    output = tmp_path / "run"
    result = killed_run(tiny_data, output, "train-step:8")  # epoch 1, after its 3rd of 5 updates
    assert result.returncode == -9, result.stderr
    assert [r["epoch"] for r in records(output)] == [0]
    status, out, err = run_cli(
        deit.main, [*FLAGS, "--data-path", tiny_data, "--output_dir", output, "--auto-resume"], capsys
    )
    assert status == 0, err
    assert "continuing at epoch 1" in out
    assert_same_run(uninterrupted, output)


@pytest.mark.slow
def test_mid_epoch_checkpoints_resume_without_repeating_samples(tiny_data, tmp_path, uninterrupted, capsys):
    output = tmp_path / "run"
    result = killed_run(tiny_data, output, "train-step:8", "--save-every-steps", "2")
    assert result.returncode == -9, result.stderr
    state = torch.load(output / "checkpoint.pth", weights_only=True)
    assert state["partial"]["epoch"] == 1 and state["partial"]["stats"]["steps"] == 2
    status, out, err = run_cli(
        deit.main,
        [*FLAGS, "--data-path", tiny_data, "--output_dir", output, "--auto-resume", "--save-every-steps", "2"],
        capsys,
    )
    assert status == 0, err
    assert "continuing at epoch 1, step 2" in out
    log = json.loads((output / "log.txt").read_text().splitlines()[1])
    assert log["train_images"] == 80  # the resumed epoch saw each of its 5 batches once
    assert_same_run(uninterrupted, output)


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint(tiny_data, tmp_path, uninterrupted, capsys):
    output = tmp_path / "run"
    # writes: epoch 0 mid-epoch x2, best, best EMA, checkpoint.pth; the 6th is epoch 1's first mid-epoch one
    result = killed_run(tiny_data, output, "checkpoint-write:6", "--save-every-steps", "2")
    assert result.returncode == -9, result.stderr
    assert list(output.glob(".checkpoint.pth.tmp-*")), "the killed write left its temporary file"
    assert torch.load(output / "checkpoint.pth", weights_only=True)["epoch"] == 0  # the old file is whole
    status, out, err = run_cli(
        deit.main,
        [*FLAGS, "--data-path", tiny_data, "--output_dir", output, "--auto-resume", "--save-every-steps", "2"],
        capsys,
    )
    assert status == 0, err
    assert not list(output.glob(".*.tmp-*"))
    assert_same_run(uninterrupted, output)


def test_torn_checkpoint_falls_back_to_the_previous_one(tiny_data, tmp_path, uninterrupted, capsys):
    output = tmp_path / "run"
    shutil.copytree(uninterrupted, output)
    data = (output / "checkpoint.pth").read_bytes()
    (output / "checkpoint.pth").write_bytes(data[: len(data) // 2])  # a damaged copy
    status, out, err = run_cli(
        deit.main, [*FLAGS, "--data-path", tiny_data, "--output_dir", output, "--auto-resume"], capsys
    )
    assert status == 0, err
    assert "checkpoint.pth is not a readable checkpoint" in out and "continuing from checkpoint-prev.pth" in out
    assert_same_run(uninterrupted, output)

    (output / "checkpoint.pth").write_bytes(data[: len(data) // 2])
    status, _, err = run_cli(
        deit.main, [*FLAGS, "--data-path", tiny_data, "--resume", output / "checkpoint.pth"], capsys
    )
    assert_one_line_error(status, err, "--resume", "checkpoint.pth", "not a readable checkpoint")


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_checkpoint(tiny_data, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    real_forward = losses.BaseLoss.forward

    def nan_at_call_8(self, inputs, outputs, targets):
        calls["n"] += 1
        loss = real_forward(self, inputs, outputs, targets)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(losses.BaseLoss, "forward", nan_at_call_8)
    output = tmp_path / "run"
    status, _, err = run_cli(deit.main, [*FLAGS, "--data-path", tiny_data, "--output_dir", output], capsys)
    assert_one_line_error(status, err, "loss became nan at epoch 1, step 2", "last checkpoint is kept")
    assert torch.load(output / "checkpoint.pth", weights_only=True)["epoch"] == 0
    assert [r["epoch"] for r in records(output)] == [0]


def test_fp16_overflow_is_absorbed_by_the_grad_scaler(tiny_data):
    """A huge initial loss scale overflows the fp16 gradients: those steps are skipped, training goes on."""

    from toe.data import build_dataset, build_train_loader, build_train_transform
    from toe.engine import DistInfo, Precision, train_steps
    from toe.engine.losses import BaseLoss

    model = tiny_vit(seed=0, num_classes=10, depth=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision = Precision(torch.device("cpu"), torch.float16)
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)
    dataset, _ = build_dataset("IMNET", tiny_data, True, build_train_transform(32, auto_augment=None, re_prob=0))
    loader = build_train_loader(dataset, 16, DistInfo(), seed=0, num_workers=0)
    before = [p.detach().clone() for p in model.parameters()]
    for epoch in range(4):
        stats = train_steps(
            model,
            BaseLoss(torch.nn.CrossEntropyLoss()),
            loader,
            optimizer,
            precision,
            DistInfo(),
            epoch,
            show_progress=False,
        )
        assert stats.steps == 5 and torch.isfinite(torch.tensor(stats.loss))
    assert precision.scaler.get_scale() < 2.0**30  # overflows were seen and the scale came down
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # later steps did update
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_corrupt_images_name_the_file_or_are_skipped_and_counted(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    truncated = data / "train" / "circle" / "00001.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    (data / "train" / "dots" / "00002.png").write_text("not an image")
    base = [*FLAGS, "--epochs", "1", "--data-path", data, "--no-model-ema"]
    for workers in ("0", "1"):  # also from a loader worker process: still one line
        status, _, err = run_cli(deit.main, [*base, "--num_workers", workers], capsys)
        assert_one_line_error(status, err, "cannot read image", "--skip-corrupt")
        assert "00001.png" in err or "00002.png" in err
    status, out, err = run_cli(deit.main, [*base, "--skip-corrupt", "--output_dir", tmp_path / "out"], capsys)
    assert status == 0, err
    assert records(tmp_path / "out")[0]["train_skipped_images"] >= 2  # each epoch draws every image once


@pytest.mark.slow
def test_a_corrupt_image_read_by_loader_workers_ends_the_process_with_one_line(tiny_data, tmp_path):
    """In a fresh process with 2 loader workers, the error line is all that is printed: the workers are shut
    down with their iterator before the interpreter exits (they used to be killed at exit, and torch's
    SIGCHLD handler added an "Exception ignored in atexit callback" traceback, in about 2 of 3 runs)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    truncated = data / "train" / "circle" / "00001.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    command = [sys.executable, ROOT / "ToE" / "deit" / "main.py", *FLAGS, "--epochs", "1", "--data-path", data]
    for attempt in range(4):
        result = subprocess.run(
            [*command, "--num_workers", "2", "--output_dir", tmp_path / f"run{attempt}"],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2
        assert result.stderr.splitlines() == [result.stderr.strip()] and "cannot read image" in result.stderr, (
            result.stderr
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAYOUT_FREE = ["--mixup", "0", "--cutmix", "0", "--drop-path", "0", "--no-repeated-aug"]


@pytest.fixture(scope="module")
def one_process(tiny_data, tmp_path_factory):
    """The run the two-process runs below are compared with: one process, the same total batch."""
    one = tmp_path_factory.mktemp("one")
    train(tiny_data, one, *LAYOUT_FREE, "--batch-size", "16")
    return one


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_torchrun_restarts_a_killed_worker_from_the_last_checkpoint(signal_name, tiny_data, tmp_path, one_process):
    """Rank 1 gets the signal after the 3rd update of epoch 1. SIGKILL: torchrun restarts both workers from the
    last checkpoint. SIGTERM (pre-emption): both processes stop at the next update, with a mid-epoch
    checkpoint, exit 143, and the restarted workers continue from that step."""
    elastic = tmp_path / "elastic"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOE_FAILPOINT": "train-step:8:1"}  # rank 1, epoch 1
    env["TOE_FAILPOINT_SIGNAL"] = signal_name
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--max-restarts",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            ROOT / "ToE" / "deit" / "main.py",
            *FLAGS,
            *LAYOUT_FREE,
            "--data-path",
            tiny_data,
            "--batch-size",
            "8",
            "--output_dir",
            elastic,
            "--auto-resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing at epoch 1" in result.stdout  # the restarted workers resumed
    if signal_name == "SIGTERM":  # rank 0 stopped with rank 1, at the same update
        assert "pre-empted (a signal to another process) at epoch 1, step 4;" in result.stdout
        assert "continuing at epoch 1, step 4" in result.stdout
    log = records(elastic)
    assert [r["epoch"] for r in log] == [0, 1, 2] and all(r["replicas_in_sync"] for r in log)
    a = torch.load(one_process / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(elastic / "checkpoint.pth", weights_only=True)["model"]
    for name in a:  # two processes against one: measured float noise (tests/layout_noise.md)
        torch.testing.assert_close(b[name], a[name], **LAYOUT_NOISE["deit"]["weights"])


@pytest.mark.slow
def test_torchrun_without_restarts_the_survivor_of_a_killed_worker_says_so_in_one_line(tiny_data, tmp_path):
    """Rank 1 is killed (SIGKILL) in epoch 0; no --max-restarts. Rank 0's collective fails: one line from it (the
    lines after it are torchrun's own report of the failed child), not a 40-line gloo traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOE_FAILPOINT": "train-step:3:1"}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"),
            *("--master_port", str(free_port()), ROOT / "ToE" / "deit" / "main.py", *FLAGS, *LAYOUT_FREE),
            *("--data-path", tiny_data, "--batch-size", "8", "--output_dir", tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode != 0
    assert "error: process 0 lost another process of this torchrun job (" in result.stderr
    assert "--auto-resume" in result.stderr and "[rank0]: Traceback" not in result.stderr


def torchrun_deit(tiny_data, output, env_extra: dict, *extra) -> subprocess.CompletedProcess:
    """The tiny DeiT under torchrun, 2 CPU processes of batch 8, one restart allowed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1"),
            *("--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"),
            *(ROOT / "ToE" / "deit" / "main.py", *FLAGS, *LAYOUT_FREE, "--data-path", tiny_data, "--batch-size", "8"),
            *("--output_dir", output, "--auto-resume", *extra),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
def test_a_preempted_torchrun_job_ends_with_the_uninterrupted_log_and_weights(tiny_data, tmp_path):
    """SIGTERM to rank 1 mid-epoch: both processes write one mid-epoch checkpoint with each process's own
    partial sums (it held only rank 0's: the resumed epoch's train_loss differed in the fifth digit), and the
    restarted job ends with log.txt and weights equal to those of an uninterrupted 2-process job."""
    whole = torchrun_deit(tiny_data, tmp_path / "whole", {})
    assert whole.returncode == 0, whole.stderr[-2000:]
    signal = {"TOE_FAILPOINT": "train-step:8:1", "TOE_FAILPOINT_SIGNAL": "SIGTERM"}
    preempted = torchrun_deit(tiny_data, tmp_path / "preempted", signal)
    assert preempted.returncode == 0, preempted.stderr[-2000:]
    assert "continuing at epoch 1, step 4" in preempted.stdout
    assert records(tmp_path / "preempted") == records(tmp_path / "whole")
    a = torch.load(tmp_path / "whole" / "checkpoint.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "preempted" / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
