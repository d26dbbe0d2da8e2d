"""A resume may not silently change the run: flags, processes and images against the checkpoint's record;
deliberate changes (--change-on-resume) are logged; checkpoints that record an impossible position are refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, TINY_DEIT, assert_one_line_error, read_log, run_cli
from PIL import Image

from toe.engine import FoundCheckpoint
from toe.errors import UserError
from toe.options import flags_that_may_change_on_resume, run_main
from toe.recipes import deit
from toe.recipes.resume import resume_changes

DEIT_FREE = flags_that_may_change_on_resume(deit.build_parser())  # what DeiT's resume may change

FLAGS = [*TINY_DEIT, "--epochs", "2", "--seed", "5", "--expansion-step", "0", "1", "--keep-rate", "0.5", "1.0"]


def files_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".toe-run.lock"}


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    """A finished 2-epoch run, and a copy of it stopped after epoch 0 (its checkpoint-prev.pth)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    run_main(deit.main, [str(a) for a in [*FLAGS, "--data-path", tiny_data, "--output_dir", run]])
    return run


@pytest.fixture
def after_epoch_0(finished, tmp_path):
    """The finished run put back to the end of its epoch 0 (what a kill after that epoch leaves)."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.copy(run / "checkpoint-prev.pth", run / "checkpoint.pth")
    return run


@pytest.mark.parametrize(
    ("extra", "listed"),
    [
        (["--batch-size", "8"], "--batch-size 16 (now 8)"),
        (["--keep-rate", "0.6", "1.0"], "--keep-rate 0.5 1.0 (now 0.6 1.0)"),
        (["--epochs", "3"], "--epochs 2 (now 3)"),
        (["--seed", "6"], "--seed 5 (now 6)"),
        (["--model-kwargs", "embed_dim=32", "depth=2", "num_heads=2"], "--model-kwargs embed_dim=32 depth=3"),
        (["--lr", "1e-3", "--mixup", "0.5"], "--lr 1.5625e-05 (now 3.125e-05); --mixup 0.8 (now 0.5)"),
    ],
)
def test_a_resume_with_other_flags_is_refused_and_changes_nothing(extra, listed, after_epoch_0, tiny_data, capsys):
    before = files_of(after_epoch_0)
    argv = [*FLAGS, "--data-path", tiny_data, "--output_dir", after_epoch_0, "--auto-resume", *extra]
    status, _, err = run_cli(deit.main, argv, capsys)
    assert_one_line_error(status, err, "checkpoint.pth was written by a run with other settings", listed)
    assert "or pass --change-on-resume" in err
    assert files_of(after_epoch_0) == before


def test_other_training_images_are_refused(after_epoch_0, tiny_data, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    for image in (other / "train" / "ring").iterdir():  # same names and counts, other pictures
        Image.open(image).rotate(90).save(image)
    argv = [*FLAGS, "--data-path", other, "--output_dir", after_epoch_0, "--auto-resume"]
    status, _, err = run_cli(deit.main, argv, capsys)
    assert_one_line_error(status, err, "other settings: training images 80 images of 10 classes, fingerprint")


@pytest.mark.slow
def test_extending_the_epochs_on_purpose_is_logged_and_the_schedule_follows(after_epoch_0, tiny_data, tmp_path, capsys):
    argv = [*FLAGS, "--data-path", tiny_data, "--output_dir", after_epoch_0, "--auto-resume", "--epochs", "3"]
    status, out, err = run_cli(deit.main, [*argv, "--change-on-resume", "epochs"], capsys)
    assert status == 0, err
    assert "changed on resume (--change-on-resume): --epochs 2 -> 3; the LR schedule follows the new flags" in out
    log = read_log(after_epoch_0)
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[1]["resume_changes"] == {"epochs": [2, 3]} and "resume_changes" not in log[0] | log[2]
    # the learning rate of each later epoch is that of a run planned for 3 epochs from the start
    planned = tmp_path / "planned"
    run_main(deit.main, [str(a) for a in [*FLAGS, "--data-path", tiny_data, "--output_dir", planned, "--epochs", "3"]])
    lrs = [r["train_lr"] for r in read_log(planned)]
    assert [r["train_lr"] for r in log[1:]] == lrs[1:]
    # a checkpoint written in the middle of an epoch cannot change what the epoch's samples are
    state = torch.load(after_epoch_0 / "checkpoint.pth", weights_only=True)
    state["partial"] = {"epoch": 3, "stats": {"steps": 2}, "rng": [{}]}
    found = FoundCheckpoint(state, after_epoch_0 / "checkpoint.pth", "--resume mid.pth")
    current = {**state["args"], "batch_size": 8, "change_on_resume": ["batch_size"]}
    with pytest.raises(UserError, match="in the middle of an epoch continues only with the recorded values"):
        resume_changes(current, state["identity"], found, DEIT_FREE)


def test_another_number_of_processes_is_refused_unless_asked(finished):
    state = torch.load(finished / "checkpoint.pth", weights_only=True)
    found = FoundCheckpoint(state, finished / "checkpoint.pth", "--resume ck.pth")
    assert state["identity"]["world_size"] == 1
    two = {**state["identity"], "world_size": 2}
    with pytest.raises(UserError, match=r"other settings: processes 1 \(now 2\); .*--change-on-resume world_size"):
        resume_changes(state["args"], two, found, DEIT_FREE)
    asked = {**state["args"], "change_on_resume": ["world_size"]}
    assert resume_changes(asked, two, found, DEIT_FREE) == {"world_size": (1, 2)}
    assert resume_changes(state["args"], state["identity"], found, DEIT_FREE) == {}


def test_the_same_flags_resume_and_a_finished_run_has_nothing_left(finished, tmp_path, tiny_data, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = files_of(run)
    argv = [*FLAGS, "--data-path", tiny_data, "--output_dir", run, "--auto-resume", "--num_workers", "1"]
    status, out, err = run_cli(deit.main, argv, capsys)  # workers, device, progress may change freely
    assert status == 0, err
    assert "holds all 2 epochs of this run: nothing left to train" in out
    assert files_of(run)["log.txt"] == before["log.txt"]


@pytest.mark.parametrize(
    ("epoch", "fragment"),
    [
        (-5, "records epoch -5; a checkpoint records the last finished epoch, a whole number >= -1"),
        ("abc", "records epoch 'abc'"),
        (99, "has finished epoch 99, past the 2 epochs of this run"),
    ],
)
def test_a_checkpoint_with_an_impossible_position_is_refused(epoch, fragment, finished, tmp_path, tiny_data, capsys):
    state = torch.load(finished / "checkpoint-prev.pth", weights_only=True)
    state["epoch"] = epoch
    torch.save(state, tmp_path / "odd.pth")
    argv = [*FLAGS, "--data-path", tiny_data, "--output_dir", tmp_path / "out", "--resume", tmp_path / "odd.pth"]
    status, _, err = run_cli(deit.main, argv, capsys)
    assert_one_line_error(status, err, f"--resume {tmp_path / 'odd.pth'}", fragment)
    assert not (tmp_path / "out" / "log.txt").exists()


def test_evaluating_the_checkpoint_of_a_longer_run_is_not_refused(finished, tmp_path, tiny_data, capsys):
    state = torch.load(finished / "checkpoint.pth", weights_only=True)
    state["epoch"] = 99
    torch.save(state, tmp_path / "longer.pth")
    argv = [*FLAGS, "--data-path", tiny_data, "--eval", "--resume", tmp_path / "longer.pth"]
    status, out, err = run_cli(deit.main, argv, capsys)
    assert status == 0, err
    assert f"evaluating {tmp_path / 'longer.pth'} (finished epoch 99)" in out and "Accuracy of the network" in out


WITH_OTHER_DATA = """
import os, sys
from toe.recipes.deit import cli
sys.argv = [sys.argv[0], *[a.replace("@DATA@", sys.argv[1 + int(os.environ["RANK"])]) for a in sys.argv[3:]]]
cli()
"""


@pytest.mark.slow
def test_torchrun_processes_that_see_other_images_are_stopped(tiny_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    for image in (other / "train" / "dots").iterdir():  # same size, other pictures
        Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    wrapper = tmp_path / "other_data.py"
    wrapper.write_text(WITH_OTHER_DATA)
    argv = [*FLAGS, "--epochs", "1", "--data-path", "@DATA@", "--output_dir", tmp_path / "run", "--batch-size", "8"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            wrapper,
            tiny_data,
            other,
            *map(str, argv),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "error: process 1 sees other training images than process 0: fingerprint" in result.stderr
    assert "Traceback" not in result.stderr.split("error: process 1")[0][-2000:]
    assert not (tmp_path / "run" / "log.txt").exists()


def test_a_checkpoint_written_as_deit_writes_it_evaluates_and_refuses_a_foreign_optimizer(
    finished, tmp_path, tiny_data, capsys
):
    """DeiT's main.py saves model, optimizer, lr_scheduler, epoch, model_ema, scaler and its argparse flags.
    --eval --resume of such a file evaluates the weights (DeiT loads no optimizer state to evaluate); a training
    resume whose optimizer state does not fit (one parameter group here, DeiT's weight-decay split has two)
    is one line that names the file and the way out, and the run folder is left as it was."""
    import argparse

    ours = torch.load(finished / "checkpoint.pth", weights_only=True)
    deit_style = tmp_path / "deit_checkpoint.pth"
    single_group = {"state": {}, "param_groups": [{**ours["optimizer"]["param_groups"][0], "params": [0, 1]}]}
    torch.save(
        {
            "model": ours["model"],
            "optimizer": single_group,
            "lr_scheduler": {},
            "epoch": 1,
            "model_ema": ours["model_ema"],
            "scaler": {},
            "args": argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4),
        },
        deit_style,
    )
    status, out, err = run_cli(deit.main, [*FLAGS, "--data-path", tiny_data, "--eval", "--resume", deit_style], capsys)
    assert status == 0, err
    assert f"evaluating {deit_style}" in out and "Accuracy of the network on the 40 test images" in out
    run = tmp_path / "run"
    status, _, err = run_cli(
        deit.main,
        [*FLAGS, "--epochs", "3", "--data-path", tiny_data, "--resume", deit_style, "--output_dir", run],
        capsys,
    )
    assert_one_line_error(status, err, f"{deit_style}: its optimizer state does not fit", "--finetune")
    assert not (run / "log.txt").exists() and not (run / "checkpoint.pth").exists()


@pytest.mark.parametrize("recipe", ["deit", "vpt", "lvvit", "yolos", "efficienttrain"])
def test_the_flags_a_resume_may_change_are_marked_where_they_are_defined(recipe):
    """Paths, workers, device, precision, progress and checkpoint interval may change on resume; what the run
    trains may not. The marks sit on each flag's definition (may_change_on_resume); this is the list they give."""
    import importlib

    parser = importlib.import_module(f"toe.recipes.{recipe}").build_parser()
    free = flags_that_may_change_on_resume(parser)
    assert {"resume", "eval", "start_epoch", "device", "save_every_steps"} <= free
    trains = {"epochs", "lr", "batch_size", "seed", "expansion_step", "keep_rate", "token_reduction", "model"}
    assert not free & trains
    assert free <= {a.dest for a in parser._actions}
