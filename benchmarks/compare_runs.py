"""Whole-run comparison: the demo model trained with and without ToE, same seed, same epochs.

Runs ToE/deit/main.py twice with the demo's settings (ToE/deit/run/demo.sh) into OUTPUT/toe and
OUTPUT/baseline (or reuses finished runs there), then prints total train compute time (data loading
excluded), wall time, final and best top-1 of each and the ratios, as a markdown table.

    python benchmarks/compare_runs.py --output output/compare
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from toe.engine import read_log

ROOT = Path(__file__).resolve().parents[1]
DEMO = [
    "--device",
    "cpu",
    "--num_workers",
    "0",
    "--seed",
    "0",
    "--model",
    "deit_tiny_patch16_224",
    "--input-size",
    "32",
    "--patch-size",
    "4",
    "--model-kwargs",
    "depth=6",
    "--epochs",
    "9",
    "--batch-size",
    "64",
    "--unscale-lr",
    "--lr",
    "1e-3",
    "--warmup-epochs",
    "0",
    "--drop-path",
    "0.05",
    "--aa",
    "rand-m5-mstd0.5-inc1",
    "--mixup",
    "0",
    "--cutmix",
    "0",
    "--reprob",
    "0",
    "--model-ema-decay",
    "0.99",
    "--no-progress",
]
TOE = [
    "--expansion-step",
    "0",
    "3",
    "6",
    "--keep-rate",
    "0.5",
    "0.75",
    "1.0",
    "--initialization-keep-rate",
    "0.25",
    "--expansion-multiple-stage",
    "2",
]


def train(data: Path, output: Path, extra: list[str]) -> list[dict]:
    command = [
        sys.executable,
        str(ROOT / "ToE" / "deit" / "main.py"),
        *DEMO,
        "--data-path",
        str(data),
        "--output_dir",
        str(output),
        "--auto-resume",
        *extra,
    ]
    subprocess.run(command, check=True)
    return read_log(output)


def summary(records: list[dict]) -> dict:
    last = records[-1]
    return {
        "compute": sum(r["train_compute_time"] for r in records),
        "wall": sum(r["epoch_time"] for r in records),
        "top1": last["test_acc1"],
        "best": last["best_test_acc1"],
        "ema": last.get("test_ema_acc1"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", type=Path, default=Path("data/demo"))
    parser.add_argument("--output", type=Path, default=Path("output/compare"))
    args = parser.parse_args()
    subprocess.run(
        [sys.executable, str(ROOT / "datasets" / "make_demo_data.py"), "--out", str(args.data_path)], check=True
    )
    toe = summary(train(args.data_path, args.output / "toe", TOE))
    base = summary(train(args.data_path, args.output / "baseline", []))
    print("| run | train compute | train wall | final top-1 | best top-1 | final EMA top-1 |")
    print("|---|---|---|---|---|---|")
    for name, s in (("ToE", toe), ("baseline", base)):
        print(
            f"| {name} | {s['compute']:.0f} s | {s['wall']:.0f} s | {s['top1']:.1f}% | {s['best']:.1f}% | "
            f"{s['ema']:.1f}% |"
        )
    print(
        f"| baseline / ToE | {base['compute'] / toe['compute']:.2f}x | {base['wall'] / toe['wall']:.2f}x | "
        f"{toe['top1'] - base['top1']:+.1f} pt | {toe['best'] - base['best']:+.1f} pt | "
        f"{toe['ema'] - base['ema']:+.1f} pt |"
    )


if __name__ == "__main__":
    main()
