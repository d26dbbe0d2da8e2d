"""Fixtures: a tiny generated dataset in ImageNet layout (shared by the whole session)."""

from __future__ import annotations

import os

if not os.environ.get("OMP_NUM_THREADS"):  # before torch is imported, here and in every process a test starts
    # One torch thread per process: pytest-xdist already runs one worker per core, and two workers of two
    # threads each on 2 cores made the fast tests 2.8x slower (108 s -> 38 s measured side by side).
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
from helpers import demo_generator  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """10 classes of drawn shapes, 8 train + 4 val images each, 32 px."""
    out = tmp_path_factory.mktemp("data") / "demo"
    demo_generator().generate(out, train_per_class=8, val_per_class=4, size=32)
    return out


@pytest.fixture(scope="session")
def tiny_runs(tiny_data, tmp_path_factory):
    """Two tiny DeiT runs on ``tiny_data``: "toe" (2 epochs: stage 1 keeps 32 of 64 patches, stage 2 all)
    and "baseline" (1 epoch, no ToE). Returns {name: output folder}."""
    from helpers import TINY_DEIT

    from toe.options import run_main
    from toe.recipes import deit

    root = tmp_path_factory.mktemp("tiny_runs")
    flags = {
        "toe": ["--epochs", "2", "--toe", "--expansion-step", "0", "1", "--keep-rate", "0.5", "1.0"],
        "baseline": ["--epochs", "1"],
    }
    for name, extra in flags.items():
        run_main(deit.main, [*TINY_DEIT, "--data-path", str(tiny_data), "--output_dir", str(root / name), *extra])
    return {name: root / name for name in flags}
