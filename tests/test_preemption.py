"""Pre-emption: a scheduler's SIGTERM (or SIGUSR1) ends training at the next update with a checkpoint and exit
status 143, the SLURM script requeues the job, and --auto-resume continues bit for bit."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, run_cli
from test_reliability import FLAGS, assert_same_run, train

from toe.engine.preemption import REQUEUE_STATUS
from toe.recipes import deit

SLURM = ROOT / "ToE" / "deit" / "run" / "slurm.sbatch"


def test_the_slurm_script_passes_the_signal_on_and_requeues(tmp_path):
    """srun and scontrol are stubs: srun records the signal it gets and exits 143, as the training does."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    quoted = shlex.quote(str(log))
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\n"
        f"trap 'echo \"srun got TERM\" >> {quoted}; exit 143' TERM\n"
        f'echo "srun $*" >> {quoted}\n'
        "while true; do sleep 0.1; done\n"
    )
    (bin_dir / "scontrol").write_text(
        f'#!/usr/bin/env bash\necho "scontrol $*" >> {quoted}\n[ "$1" = show ] && echo node0\nexit 0\n'
    )
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DATA": "/data/in1k",
        "OUTPUT": "runs/x",
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "node[0-1]",
        "SLURM_NNODES": "2",
        "SLURM_SUBMIT_DIR": str(ROOT),
    }
    job = subprocess.Popen(["bash", SLURM], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (log.exists() and "srun torchrun" in log.read_text()):
        assert time.monotonic() < deadline and job.poll() is None, "the script did not start srun"
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)  # --signal=B:USR1@180: the time limit is near
    _, err = job.communicate(timeout=60)
    calls = log.read_text().splitlines()
    assert job.returncode == 0, err
    assert calls[-2:] == ["srun got TERM", "scontrol requeue 77"]
    assert "training exit status 143" in err
    assert "--auto-resume" in calls[1] and "#SBATCH --requeue" in SLURM.read_text()


LOADER_LEFT_RUNNING = """
from torch.utils.data import DataLoader
from toe.engine.preemption import ignore_stop_signals
loader = DataLoader(list(range(64)), batch_size=4, num_workers=2, worker_init_fn=ignore_stop_signals,
                    persistent_workers=True)
batches = iter(loader)
next(batches)
print("workers started", flush=True)
"""


@pytest.mark.slow  # over 8 s: a fresh process with loader workers
def test_a_process_that_exits_with_its_loader_workers_running_ends():
    """At exit, multiprocessing ends the workers still running with SIGTERM from the main process: a worker
    that ignored every SIGTERM (a scheduler's) would make the process wait for it for ever."""
    done = subprocess.run([sys.executable, "-c", LOADER_LEFT_RUNNING], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "workers started" in done.stdout, done.stderr[-2000:]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("uninterrupted")
    train(tiny_data, output)
    return output


def stopped_at(tiny_data, output, failpoint, *extra, workers="0") -> subprocess.Popen:
    """The recipe in a new session (a job of its own), stopped (SIGSTOP) at ``failpoint``."""
    env = {**os.environ, "TOE_FAILPOINT": failpoint, "TOE_FAILPOINT_SIGNAL": "SIGSTOP"}
    argv = [*FLAGS, "--num_workers", workers, "--data-path", tiny_data, "--output_dir", output, *extra]
    process = subprocess.Popen(
        [sys.executable, ROOT / "ToE" / "deit" / "main.py", *map(str, argv)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), "the run ended before its failpoint"
    return process


@pytest.mark.slow
@pytest.mark.parametrize(("name", "workers"), [("SIGTERM", "2"), ("SIGUSR1", "0")])
def test_a_scheduler_signal_stops_with_a_checkpoint_and_the_run_continues_bit_for_bit(
    name, workers, tiny_data, tmp_path, uninterrupted, capsys
):
    output = tmp_path / "run"
    job = stopped_at(tiny_data, output, "train-step:8", workers=workers)  # epoch 1, after its 3rd of 5 updates
    os.killpg(job.pid, signal.Signals[name])  # as SLURM does: every process of the job, loader workers too
    os.kill(job.pid, signal.SIGCONT)  # the signal comes as the 4th update starts: that step is finished
    out, err = job.communicate(timeout=300)
    assert job.returncode == REQUEUE_STATUS, err[-3000:]
    assert f"pre-empted ({name}) at epoch 1, step 4;" in out and "continue with --auto-resume" in out
    assert "Traceback" not in err
    state = torch.load(output / "checkpoint.pth", weights_only=True)
    assert state["partial"]["epoch"] == 1 and state["partial"]["stats"]["steps"] == 4
    status, out, err = run_cli(
        deit.main, [*FLAGS, "--data-path", tiny_data, "--output_dir", output, "--auto-resume"], capsys
    )
    assert status == 0, err
    assert "continuing at epoch 1, step 4" in out
    assert_same_run(uninterrupted, output)
