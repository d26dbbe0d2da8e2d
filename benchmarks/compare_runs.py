"""Whole-run comparison: the demo trained with and without ToE, same seed, same epochs, one after the other.

Runs ToE/deit/run/demo.sh (with --seed) into OUTPUT/toe and, with TOE=0 (the same flags without ToE), into
OUTPUT/baseline (finished runs there are reused), overlays their curves in OUTPUT/training_curves.png,
and prints total train compute time (data loading excluded), wall time, final and best top-1 of each
and the ratios, as a markdown table for BENCHMARKS.md.

    python benchmarks/compare_runs.py --output output/compare
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from toe.engine import read_log

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "ToE" / "deit" / "run" / "demo.sh"


def train(data: Path, output: Path, with_toe: bool, seed: int) -> dict:
    """Run the demo (``with_toe`` or its baseline) into ``output``; totals and top-1 from its log.txt."""
    env = {**os.environ, "PYTHON": sys.executable, "DATA": str(data), "OUTPUT": str(output), "SEED": str(seed)}
    subprocess.run(["bash", str(DEMO)], env={**env, "TOE": "1" if with_toe else "0"}, check=True)
    records = read_log(output)
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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data, output = args.data_path.resolve(), args.output.resolve()
    toe = train(data, output / "toe", with_toe=True, seed=args.seed)
    base = train(data, output / "baseline", with_toe=False, seed=args.seed)
    curves = output / "training_curves.png"
    toe_cli = [sys.executable, "-m", "toe.cli"]
    subprocess.run([*toe_cli, "plot", output / "toe", output / "baseline", "--out", curves], check=True)
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
