"""torchrun with 2 CPU processes (gloo): ranks stay identical and match a 1-process run of the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import LAYOUT_NOISE, ROOT, TINY_DEIT, free_port, load_model_state, read_log

from toe.options import run_main
from toe.recipes import deit

# no randomness that depends on the process layout: no mixup (mixes within a local batch), no drop-path,
# no repeated augmentation (it changes the sampling); augmentations are seeded per global position
LAYOUT_FREE = [
    "--epochs",
    "1",
    "--toe",
    "--mixup",
    "0",
    "--cutmix",
    "0",
    "--drop-path",
    "0",
    "--no-repeated-aug",
    "--seed",
    "5",
]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_main(
        deit.main,
        [*TINY_DEIT, *LAYOUT_FREE, "--data-path", str(tiny_data), "--batch-size", "16", "--output_dir", str(one)],
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            ROOT / "ToE" / "deit" / "main.py",
            *TINY_DEIT,
            *LAYOUT_FREE,
            "--data-path",
            tiny_data,
            "--batch-size",
            "8",
            "--output_dir",
            two,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = read_log(two)[-1]
    assert record["replicas_in_sync"] is True  # both ranks ended with identical weights
    assert record["train_images"] == 80 and record["toe_tokens"] == 33
    assert len(list((two / "tensorboard").iterdir())) == 1  # only rank 0 writes files

    single, ddp = load_model_state(one / "checkpoint.pth"), load_model_state(two / "checkpoint.pth")
    noise = LAYOUT_NOISE["deit"]  # measured float noise of this comparison (tests/layout_noise.md)
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], **noise["weights"], msg=f"{name} differs")
    loss_one = read_log(one)[-1]["train_loss"]
    assert abs(record["train_loss"] - loss_one) < noise["loss"]
