"""One run per output folder: the run-folder lock, and output folders that cannot be written.

The lock test starts a real second process: a training run that stops itself (SIGSTOP, through the
TOE_FAILPOINT fault injection) in the middle of its first epoch while holding the folder; a second run
on the same folder must be turned away naming the holder, and the first must then finish as if alone.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, TINY_DEIT, TINY_ET_MODEL, assert_one_line_error, run_cli

from toe.engine import run_lock
from toe.recipes import deit, et_training, generate_label, lvvit

FLAGS = [*TINY_DEIT, "--epochs", "2", "--seed", "3"]


def stopped_run(argv: list, failpoint: str = "train-step:2") -> subprocess.Popen:
    """Start ``argv`` in a new process that stops itself (SIGSTOP) at ``failpoint``; return once it stopped."""
    env = {**os.environ, "TOE_FAILPOINT": failpoint, "TOE_FAILPOINT_SIGNAL": "SIGSTOP"}
    process = subprocess.Popen(
        [sys.executable, *map(str, argv)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the first run ended before its failpoint (status {status})"
    return process


@pytest.mark.slow
def test_second_run_on_the_same_folder_is_turned_away(tiny_data, tmp_path, capsys):
    output = tmp_path / "run"
    argv = [*FLAGS, "--data-path", tiny_data, "--output_dir", output]
    first = stopped_run([ROOT / "ToE" / "deit" / "main.py", *argv])
    try:
        for extra in ([], ["--auto-resume"]):
            status, _, err = run_cli(deit.main, [*argv, *extra], capsys)
            assert_one_line_error(status, err, f"--output_dir {output} is in use by another run")
            assert f"host {socket.gethostname()}, pid {first.pid}" in err
        assert not (output / "log.txt").exists()  # the second run wrote nothing
    finally:
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err.decode()[-2000:]
    assert [json.loads(line)["epoch"] for line in (output / "log.txt").read_text().splitlines()] == [0, 1]

    # the holder has ended: its lock went with it, the folder can be continued
    status, out, err = run_cli(deit.main, [*argv, "--auto-resume", "--epochs", "2"], capsys)
    assert status == 0, err


@pytest.mark.slow
def test_a_killed_run_leaves_no_stale_lock(tiny_data, tmp_path, capsys):
    output = tmp_path / "run"
    argv = [*FLAGS, "--data-path", tiny_data, "--output_dir", output]
    first = stopped_run([ROOT / "ToE" / "deit" / "main.py", *argv], failpoint="train-step:7")  # epoch 1
    first.kill()
    first.communicate(timeout=60)
    assert (output / run_lock.LOCK_NAME).exists()  # the file stays; the lock went with the process
    status, out, err = run_cli(deit.main, [*argv, "--auto-resume"], capsys)
    assert status == 0, err
    assert "continuing at epoch 1" in out


HOLD = """
import sys, time
from toe.engine.run_lock import lock_run_folder
for folder in sys.argv[1:]:
    lock_run_folder(folder, "--output")
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_lvvit_efficienttrain_and_generate_label_lock_their_folders(tiny_data, tmp_path, capsys):
    runs, labels, stages = tmp_path / "lvvit", tmp_path / "labels", tmp_path / "et"
    for folder in (runs, labels, stages):
        folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, runs, labels, stages], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lvvit_flags = ["--model", "lvvit_t", "--img-size", "32", "-j", "0", "--device", "cpu", "--epochs", "1"]
        status, _, err = run_cli(lvvit.main, [tiny_data, *lvvit_flags, "--output", runs], capsys)
        assert_one_line_error(status, err, f"--output {runs} is in use by another run", f"pid {holder.pid}")
        status, _, err = run_cli(
            generate_label.main, [tiny_data, labels, "--model", "resnet10t", "--pretrained", "-j", "0"], capsys
        )
        assert_one_line_error(status, err, f"LABELS {labels} is in use by another run", f"pid {holder.pid}")
        et_flags = [*TINY_ET_MODEL, "--num_workers", "0", "--device", "cpu", "--epochs", "5", "--warmup_epochs", "1"]
        et_flags += ["--input_size", "32", "--data_path", tiny_data, "--output_dir", stages]
        status, _, err = run_cli(et_training.main, et_flags, capsys)
        assert_one_line_error(status, err, f"--output_dir {stages} is in use by another run", f"pid {holder.pid}")
        assert not (stages / "log.txt").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    ("error", "reason"),
    [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission")],
)
def test_an_output_folder_that_cannot_be_made_is_one_line(tiny_data, tmp_path, capsys, monkeypatch, error, reason):
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name == "out":
            raise OSError(error, os.strerror(error), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    status, _, err = run_cli(deit.main, [*FLAGS, "--data-path", tiny_data, "--output_dir", tmp_path / "out"], capsys)
    assert_one_line_error(status, err, f"--output_dir {tmp_path / 'out'} cannot be created", reason)


def test_an_output_folder_under_a_file_is_one_line(tiny_data, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("a file")
    output = tmp_path / "notes.txt" / "run"
    status, _, err = run_cli(deit.main, [*FLAGS, "--data-path", tiny_data, "--output_dir", output], capsys)
    assert_one_line_error(status, err, f"--output_dir {output} cannot be created", "Not a directory")


@pytest.mark.parametrize("failing", ["checkpoint", "checkpoint-torch", "log"])
def test_a_full_disk_while_training_is_one_line_and_the_run_continues_later(
    failing, tiny_data, tmp_path, capsys, monkeypatch
):
    """The disk fills up in epoch 1: writing its checkpoint (or its log.txt line) fails; torch's writer reports it
    as a RuntimeError. One line, exit 2; the checkpoint of epoch 0 stays, no temporary file is left, and
    --auto-resume finishes the run later."""
    real_save, real_open = torch.save, builtins.open
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if failing == "checkpoint-torch":  # what torch.save raises when the disk fills up under it
        full = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1152 vs 1046")

    def save(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            raise full
        return real_save(obj, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if str(file).endswith("log.txt") and "a" in mode and (tmp_path / "out" / "log.txt").exists():
            raise full
        return real_open(file, mode, *args, **kwargs)

    if failing.startswith("checkpoint"):
        monkeypatch.setattr(torch, "save", save)
    else:
        monkeypatch.setattr(builtins, "open", open_)
    output = tmp_path / "out"
    argv = [*FLAGS, "--data-path", tiny_data, "--output_dir", output]
    status, _, err = run_cli(deit.main, argv, capsys)
    monkeypatch.undo()
    reason = "unexpected pos 1152" if failing == "checkpoint-torch" else "No space left on device"
    assert_one_line_error(status, err, f"cannot write {output}", reason, "--auto-resume")
    saved = torch.load(output / "checkpoint.pth", weights_only=True)["epoch"]
    assert saved == (0 if failing.startswith("checkpoint") else 1)  # the log line is written after the checkpoint
    assert [json.loads(line)["epoch"] for line in (output / "log.txt").read_text().splitlines()] == [0]
    assert not list(output.glob(".*.tmp-*"))

    status, _, err = run_cli(deit.main, [*argv, "--auto-resume"], capsys)
    assert status == 0, err
    assert [json.loads(line)["epoch"] for line in (output / "log.txt").read_text().splitlines()] == [0, 1]


def test_ctrl_c_while_a_checkpoint_is_written_is_held_until_the_write_is_whole(
    tiny_data, tmp_path, capsys, monkeypatch
):
    """Ctrl-C arrives inside torch.save (while epoch 1's checkpoint is being pickled): the write finishes,
    then the run ends with "interrupted" and 130, no traceback; every file is whole (the epoch-1 checkpoint in
    place, epoch 0's kept as -prev) and --auto-resume finishes the run."""
    real_save = torch.save

    def save(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1 and "optimizer" in obj:
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler at its next instruction, inside the save
        return real_save(obj, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    output = tmp_path / "out"
    argv = [*FLAGS, "--data-path", tiny_data, "--output_dir", output]
    status, _, err = run_cli(deit.main, argv, capsys)
    monkeypatch.undo()
    assert (status, err) == (130, "interrupted\n")
    assert torch.load(output / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert torch.load(output / "checkpoint-prev.pth", weights_only=True)["epoch"] == 0
    assert not list(output.glob(".*.tmp-*"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    status, _, err = run_cli(deit.main, [*argv, "--auto-resume"], capsys)
    assert status == 0, err
