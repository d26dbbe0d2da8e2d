"""Measure the float noise that the process-layout tests must tolerate (not a test; run by hand).

The tests that compare a two-process run with a one-process run of the same global batch
(test_distributed.py, test_efficienttrain_distributed.py, test_reliability.py's torchrun restarts) cannot ask
for equal floats: a different process count sums gradients in another order (two half-batch sums and an
all-reduce instead of one sum) and runs matrix products of another shape, whose kernels block the sums
differently; a different CPU (Intel or AMD, AVX2 or AVX-512) picks other kernels again. Those roundings
grow over a few epochs of training. This script measures them: each case's one- and two-process runs under
several CPU code paths (MKL's, oneDNN's and ATen's instruction sets, as another CPU would pick them, and
1 or 2 threads), and reports the largest difference of a logged train loss and of a weight, next to what a
real change of the run (its learning rate 1% higher) moves them by. ``LAYOUT_NOISE`` in helpers.py holds
the tolerances taken from its output; tests/layout_noise.md holds the last measurement.

    python tests/measure_layout_noise.py [--out tests/layout_noise.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import ROOT, demo_generator, free_port  # noqa: E402
from test_distributed import LAYOUT_FREE as DEIT_LAYOUT_FREE  # noqa: E402
from test_distributed import TINY_DEIT  # noqa: E402
from test_efficienttrain_distributed import COMMON as ET_COMMON  # noqa: E402
from test_reliability import FLAGS as RELIABILITY_FLAGS  # noqa: E402
from test_reliability import LAYOUT_FREE as RELIABILITY_LAYOUT_FREE  # noqa: E402

# what another x86 CPU would change: the instruction set of MKL (matrix products), oneDNN and ATen's own
# vectorised kernels (reductions, softmax, norms), and the thread count of the one-process run
CODE_PATHS = {
    "this CPU, 2 threads": {},
    "this CPU, 1 thread": {"OMP_NUM_THREADS": "1"},
    "MKL AVX2": {"MKL_CBWR": "AVX2"},
    "MKL AVX-512": {"MKL_CBWR": "AVX512"},
    "MKL compatible": {"MKL_CBWR": "COMPATIBLE"},
    "ATen AVX2, oneDNN AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "ATen default": {"ATEN_CPU_CAPABILITY": "default"},
}


def torchrun(script: Path, *argv) -> list:
    return [
        sys.executable,
        *("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"),
        *("--master_port", str(free_port())),
        script,
        *argv,
    ]


def cases(data: Path, out: Path) -> dict[str, tuple[list, list]]:
    """name -> (one-process command, two-process command), as the tests run them."""
    deit = ROOT / "ToE" / "deit" / "main.py"
    et = ROOT / "ToE" / "EfficientTrain" / "ET_training.py"
    deit_flags = [*TINY_DEIT, *DEIT_LAYOUT_FREE, "--data-path", data]
    rel_flags = [*RELIABILITY_FLAGS, *RELIABILITY_LAYOUT_FREE, "--data-path", data]
    return {
        "DeiT, 1 epoch (test_distributed)": (
            [sys.executable, deit, *deit_flags, "--batch-size", "16", "--output_dir", out / "deit1"],
            torchrun(deit, *deit_flags, "--batch-size", "8", "--output_dir", out / "deit2"),
        ),
        "DeiT, 3 epochs (test_reliability)": (
            [sys.executable, deit, *rel_flags, "--batch-size", "16", "--output_dir", out / "rel1"],
            torchrun(deit, *rel_flags, "--batch-size", "8", "--output_dir", out / "rel2"),
        ),
        "EfficientTrain, 5 stages (test_efficienttrain_distributed)": (
            [sys.executable, et, *ET_COMMON, "--final_bs", "8", "--data_path", data, "--output_dir", out / "et1"],
            [sys.executable, et, *ET_COMMON, "--final_bs", "4", "--num_gpus", "2"]
            + ["--data_path", data, "--output_dir", out / "et2"],
        ),
    }


def run(command: list, env: dict) -> Path:
    """Run a training command; returns its output folder."""
    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    result = subprocess.run([str(c) for c in command], env={**clean, **env}, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{command[1]} failed:\n{result.stderr[-2000:]}")
    return Path(command[command.index("--output_dir") + 1])


def losses(folder: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (folder / "log.txt").read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    state = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    # the key bias has a zero gradient, so AdamW turns its noise into LR-sized steps: the tests skip it too
    return {k: (v.view(3, -1)[0::2] if k.endswith("attn.qkv.bias") else v).double() for k, v in state.items()}


def differences(a: Path, b: Path) -> tuple[float, float]:
    """(largest |train loss difference| of an epoch, largest |weight difference| / (1e-5 + 1e-4 |weight|),
    the excess over torch.testing.assert_close(rtol=1e-4, atol=1e-5), 1 = at that tolerance)."""
    loss = max(abs(x - y) for x, y in zip(losses(a), losses(b)))
    wa, wb = weights(a), weights(b)
    weight = max(((wa[k] - wb[k]).abs() / (1e-5 + 1e-4 * wa[k].abs())).max().item() for k in wa)
    return loss, weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        demo_generator().generate(data, train_per_class=8, val_per_class=4, size=32)  # the tests' tiny_data
        for path_name, env in CODE_PATHS.items():
            for case, (one, two) in cases(data, Path(tmp) / path_name.replace(" ", "_")).items():
                loss, weight = differences(run(one, env), run(two, {**env, "OMP_NUM_THREADS": "1"}))
                rows.append((case, path_name, loss, weight))
                print(f"{case:<58} {path_name:<24} loss {loss:.2e}  weights {weight:.2f}", flush=True)
        for case, (one, _) in cases(data, Path(tmp) / "lr").items():  # what a real change moves
            base = run(one, {})
            one = [*one, "--lr", "5.05e-4" if "deit" in str(one[1]) else "4.04e-3"]  # each recipe's default + 1%
            one[one.index("--output_dir") + 1] = base.parent / (base.name + "_lr")
            loss, weight = differences(base, run(one, {}))
            rows.append((case, "LR 1% higher (a real change)", loss, weight))
            print(f"{case:<58} {'LR 1% higher':<24} loss {loss:.2e}  weights {weight:.2f}", flush=True)
    table = [
        "| case | code path | largest train-loss difference | largest weight difference (x assert_close tol.) |",
        "|---|---|---|---|",
        *(f"| {c} | {p} | {loss:.2e} | {w:.2f} |" for c, p, loss, w in rows),
    ]
    print("\n".join(table))
    if args.out:
        Path(args.out).write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
