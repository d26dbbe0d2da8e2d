"""Can the data pipeline keep up with ToE's faster stages? Loader images/s against model images/s.

Generates an ImageNet-like folder (JPEG files of --image-size px drawn by datasets/make_demo_data.py)
unless --data-path is given, then times DeiT's training pipeline (decode, random resized crop, flip,
RandAugment m9, colour jitter, random erasing, collation) through a DataLoader with each --workers
count. A model that trains at M images/s needs about M / (images/s per worker) workers; compare with
`toe bench` (model images/s per ToE stage).

    python benchmarks/bench_loader.py --workers 0 1 2
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from toe.data import build_dataset, build_train_loader, build_train_transform
from toe.engine import DistInfo

ROOT = Path(__file__).resolve().parents[1]


def make_data(folder: Path, image_size: int, per_class: int) -> Path:
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "datasets" / "make_demo_data.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.generate(folder, per_class, 1, size=image_size, image_format="jpeg")
    return folder


def loader_images_per_sec(data: Path, input_size: int, batch: int, workers: int, batches: int) -> float:
    dataset, _ = build_dataset("IMNET", data, True, build_train_transform(input_size))
    loader = build_train_loader(dataset, batch, DistInfo(), seed=0, num_workers=workers, pin_memory=False)
    iterator = iter(loader)
    next(iterator)  # start-up (worker processes) is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", type=Path, default=None, help="an ImageNet-layout folder (default: generated)")
    parser.add_argument("--image-size", type=int, default=384, help="side of the generated JPEGs")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        per_class = (args.batches + 2) * args.batch_size // 10 + 1
        data = args.data_path or make_data(Path(scratch) / "jpeg", args.image_size, per_class)
        print(f"DeiT train pipeline at {args.input_size} px from {data} ({args.image_size} px JPEGs)")
        print("| loader workers | images/s | per worker |")
        print("|---|---|---|")
        for workers in args.workers:
            rate = loader_images_per_sec(data, args.input_size, args.batch_size, workers, args.batches)
            per_worker = rate / max(workers, 1)
            print(
                f"| {workers} (main process)" if workers == 0 else f"| {workers}",
                f"| {rate:.0f} | {per_worker:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
