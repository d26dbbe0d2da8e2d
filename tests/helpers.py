"""Shared test helpers: run a command in-process, tiny model flags, reading checkpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from toe.options import run_main

ROOT = Path(__file__).resolve().parents[1]

# a DeiT small enough for the CPU: 32 px images, 4 px patches (64 patches), width 32, 3 blocks
TINY_DEIT = [
    "--model",
    "deit_tiny_patch16_224",
    "--input-size",
    "32",
    "--patch-size",
    "4",
    "--model-kwargs",
    "embed_dim=32",
    "depth=3",
    "num_heads=2",
    "--num_workers",
    "0",
    "--no-progress",
    "--batch-size",
    "16",
    "--warmup-epochs",
    "1",
    "--device",
    "cpu",
]


def run_cli(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a command's ``main`` in this process: (exit status, stdout, stderr)."""
    try:
        run_main(main, [str(a) for a in argv])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    """A user error: exit status 2, one line on stderr, no traceback, naming what went wrong."""
    assert status == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def load_model_state(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def demo_generator():
    """The datasets/make_demo_data.py module."""
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "datasets" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
