"""Shared test helpers: the tiny model (and its flags), running a command in-process, reading checkpoints and
logs, a free port, run scripts with a recording stub."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import socket
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import timm
import torch

from toe.options import run_main

ROOT = Path(__file__).resolve().parents[1]

# the tiny ViT every test uses, small enough for the CPU: 32 px images, 4 px patches (64 patches), width 32,
# 2 heads, 3 blocks (tests that want another size override one entry)
TINY_VIT = {"img_size": 32, "patch_size": 4, "embed_dim": 32, "depth": 3, "num_heads": 2}


def tiny_vit(name: str = "deit_tiny_patch16_224", seed: int | None = None, **overrides) -> torch.nn.Module:
    """timm's ``name`` at the tiny size (``overrides`` win); seeded first when ``seed`` is given."""
    if seed is not None:
        torch.manual_seed(seed)
    return timm.create_model(name, **{**TINY_VIT, **overrides})


def tiny_model_kwargs(*keys: str, **overrides) -> list[str]:
    """The tiny size as ``--model-kwargs`` values, e.g. ``["embed_dim=32", "depth=3", "num_heads=2"]``
    (``keys``: which entries, default the width, depth and heads; ``overrides`` change values)."""
    values = {**TINY_VIT, **overrides}
    return [f"{key}={values[key]}" for key in (keys or ("embed_dim", "depth", "num_heads"))]


# Tolerances of the tests that compare a two-process run with a one-process run of the same global batch
# (float sums in another order), from the largest differences measured under every CPU code path another
# x86 machine would take, by tests/measure_layout_noise.py (its table: tests/layout_noise.md). DeiT: at
# least 400x the measured noise (loss 2.4e-7, weights below 0.01 of the tolerance). EfficientTrain: 4x the
# measured noise (loss 4.7e-4, weights 10x the DeiT tolerance), while an LR 1% higher moves the run 5x
# (loss) and 27x (weights) beyond it. loss: |difference| of a logged train loss; weights: assert_close's.
LAYOUT_NOISE = {
    "deit": {"loss": 1e-4, "weights": {"rtol": 1e-4, "atol": 1e-5}},
    "efficienttrain": {"loss": 2e-3, "weights": {"rtol": 4e-3, "atol": 4e-4}},
}

# the DeiT recipe's flags for the tiny ViT, on the CPU
TINY_DEIT = [
    "--model",
    "deit_tiny_patch16_224",
    "--input-size",
    "32",
    "--patch-size",
    "4",
    "--model-kwargs",
    *tiny_model_kwargs(),
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

# the EfficientTrain recipes' model flags for the tiny ViT (the input size is a stage flag there)
TINY_ET_MODEL = [
    "--model",
    "deit_tiny_patch16_224",
    "--model-kwargs",
    *tiny_model_kwargs("patch_size", "embed_dim", "depth", "num_heads"),
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


@contextlib.contextmanager
def killed_before_epoch(stop_epoch: int) -> Iterator[None]:
    """Within the block, training stops as a kill would (KeyboardInterrupt, exit status 130) when the engine
    starts epoch ``stop_epoch``."""
    from toe.engine import trainer

    real_train = trainer.train_one_epoch

    def interrupted(run, epoch, **options):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return real_train(run, epoch, **options)

    trainer.train_one_epoch = interrupted
    try:
        yield
    finally:
        trainer.train_one_epoch = real_train


def load_model_state(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def read_log(output: Path) -> list[dict]:
    """The records of the run in ``output``: its log.txt, every line one JSON object (strict, unlike
    toe.engine.read_log, which skips a torn line)."""
    return [json.loads(line) for line in (Path(output) / "log.txt").read_text().splitlines()]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (torchrun's --master_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_generator():
    """The datasets/make_demo_data.py module."""
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "datasets" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# TokenLabeling's PatchEmbed4_2 names for LV-ViT's stem layers (conv-BN x 3, then the projection)
UPSTREAM_STEM = {"stem.0": "conv1", "stem.1": "bn1", "stem.3": "conv2", "stem.4": "bn2", "stem.6": "conv3"}
UPSTREAM_STEM |= {"stem.7": "bn3", "embed": "proj"}


def upstream_lvvit_layout(state: dict) -> dict:
    """An LV-ViT state_dict of ours with the keys an official TokenLabeling checkpoint uses."""
    out = {}
    for key, value in state.items():
        for ours, theirs in UPSTREAM_STEM.items():
            key = key.replace(f"patch_embed.{ours}.", f"patch_embed.{theirs}.")
        out[key] = value
    return out


def write_png(path: Path, width: int, height: int, bit_depth: int = 8, colour_type: int = 0, rows: bytes = b"") -> None:
    """A PNG written by hand (PIL cannot write every case, e.g. a 900-megapixel header over no pixels):
    IHDR, one IDAT holding ``rows`` (each row a filter byte then its samples), IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def detection_demo_generator():
    """The datasets/make_detection_demo_data.py module."""
    spec = importlib.util.spec_from_file_location(
        "make_detection_demo_data", ROOT / "datasets" / "make_detection_demo_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recorded_calls(
    script: Path, tmp_path: Path, *extra: str, stub: str = "torchrun", **variables: str
) -> list[list[str]]:
    """Run the shell ``script`` (with arguments ``extra`` and environment variables ``variables``) with the
    program ``stub`` it calls (torchrun, python) replaced by one that records its arguments; returns the argument
    list of every call, in order."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir(exist_ok=True)
    record = tmp_path / "calls.txt"
    record.unlink(missing_ok=True)
    program = stub_dir / stub
    program.write_text(
        f'#!/usr/bin/env bash\n{{ printf "%s\\n" "$@"; echo "--END--"; }} >> {shlex.quote(str(record))}\n'
    )
    program.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub_dir}:{os.environ['PATH']}", **variables}
    result = subprocess.run(["bash", script, *extra], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [call.splitlines() for call in record.read_text().split("--END--\n") if call]
