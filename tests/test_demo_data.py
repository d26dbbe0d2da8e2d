"""The demo dataset generator: ImageNet layout, deterministic bytes, guarded against mixing settings."""

from __future__ import annotations

import pytest
from helpers import demo_generator
from PIL import Image

gen = demo_generator()


def test_layout_sizes_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert gen.generate(a, 3, 2, size=24, seed=1) == 50
    gen.generate(b, 3, 2, size=24, seed=1)
    assert sorted(p.name for p in (a / "train").iterdir()) == sorted(gen.CLASSES)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 10 * 5
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert Image.open(a / files[0]).size == (24, 24)
    assert gen.generate(a, 3, 2, size=24, seed=1) == 0  # complete: nothing rewritten


def test_classes_differ_and_seed_matters(tmp_path):
    gen.generate(tmp_path / "s0", 1, 1, seed=0)
    gen.generate(tmp_path / "s1", 1, 1, seed=1)
    image = (tmp_path / "s0" / "train" / "circle" / "00000.png").read_bytes()
    assert image != (tmp_path / "s1" / "train" / "circle" / "00000.png").read_bytes()
    assert image != (tmp_path / "s0" / "train" / "square" / "00000.png").read_bytes()


def test_other_arguments_into_the_same_folder_are_refused(tmp_path):
    gen.generate(tmp_path, 1, 1, size=16)
    with pytest.raises(ValueError, match="other arguments"):
        gen.generate(tmp_path, 1, 1, size=32)
