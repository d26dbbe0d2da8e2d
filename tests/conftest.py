"""Fixtures: a tiny generated dataset in ImageNet layout (shared by the whole session)."""

from __future__ import annotations

import pytest
from helpers import demo_generator


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """10 classes of drawn shapes, 8 train + 4 val images each, 32 px."""
    out = tmp_path_factory.mktemp("data") / "demo"
    demo_generator().generate(out, train_per_class=8, val_per_class=4, size=32)
    return out
