"""The five stages in two CPU processes (``--num_gpus 2`` restarts itself under torchrun): every stage starts from
the checkpoint rank 0 wrote last, the ranks stay identical and match one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import LAYOUT_NOISE, ROOT, TINY_ET_MODEL, load_model_state, read_log

from toe.options import run_main
from toe.recipes import et_training

# one epoch per stage at 16/16/16/24/32 px; nothing that depends on the process layout (mixup mixes within a
# local batch, drop-path draws per local batch: both off, drop path being 0.1 for DeiTs by default)
COMMON = [
    *TINY_ET_MODEL,
    *"--input_size 32 --input_sizes 16 16 16 24 32 --epochs 5 --effective_bs 16 --warmup_epochs 1".split(),
    *"--expansion-step 0 2 4 --mixup 0 --cutmix 0 --drop_path 0 --num_workers 0 --no-progress --device cpu".split(),
    *"--seed 5".split(),
]


@pytest.mark.slow
def test_two_processes_match_one_across_the_stages(tiny_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_main(et_training.main, [*COMMON, "--final_bs", "8", "--data_path", str(tiny_data), "--output_dir", str(one)])
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    result = subprocess.run(
        [
            sys.executable,
            ROOT / "ToE" / "EfficientTrain" / "ET_training.py",
            *COMMON,
            *("--final_bs", "4", "--num_gpus", "2", "--data_path", tiny_data, "--output_dir", two),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 x 1 x 2" in result.stdout and "4 x 2 x 2" in result.stdout  # the plan for 2 processes
    records = read_log(two)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["input_size"] for r in records] == [16, 16, 16, 24, 32]
    assert all(r["replicas_in_sync"] is True and r["train_images"] == 80 for r in records)

    single_log = read_log(one)
    noise = LAYOUT_NOISE["efficienttrain"]  # measured float noise of this comparison (tests/layout_noise.md)
    assert [r["train_loss"] for r in records] == pytest.approx([r["train_loss"] for r in single_log], abs=noise["loss"])

    single, ddp = load_model_state(one / "checkpoint.pth"), load_model_state(two / "checkpoint.pth")
    assert ddp["pos_embed"].shape == (1, 65, 32)
    for name in single:
        if name.endswith("attn.qkv.bias"):
            # the key bias has an exactly zero gradient (softmax ignores a constant shift), so AdamW turns
            # rounding noise into updates of the size of the LR there: compare the query and value biases only
            single[name], ddp[name] = single[name].view(3, -1)[0::2], ddp[name].view(3, -1)[0::2]
        torch.testing.assert_close(ddp[name], single[name], **noise["weights"], msg=f"{name} differs")
