"""Data folders as users leave them: hidden folders, symbolic link loops, small, 16-bit and bomb images."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from helpers import TINY_DEIT, assert_one_line_error, run_cli, write_png
from PIL import Image

from toe.data.datasets import image_folder
from toe.data.guard import GuardedDataset
from toe.data.image_files import data_fingerprint, read_rgb
from toe.options import UserError
from toe.recipes import deit

FLAGS = [*TINY_DEIT, "--epochs", "1", "--no-model-ema"]


@pytest.fixture
def data(tiny_data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    return copy


def test_hidden_folders_are_ignored_with_a_warning(data, capsys):
    checkpoints = data / "train" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copy(data / "train" / "ring" / "00000.png", checkpoints / "00000-checkpoint.png")
    inner = data / "train" / "ring" / ".ipynb_checkpoints"
    inner.mkdir()
    shutil.copy(data / "train" / "ring" / "00000.png", inner / "00000-checkpoint.png")
    (data / "train" / "ring" / "._00001.png").write_bytes(b"AppleDouble")
    dataset, classes = image_folder(data / "train", None)
    out, err = capsys.readouterr()
    assert classes == 10 and len(dataset) == 80
    assert f"ignoring hidden folder {checkpoints}" in err and f"ignoring hidden folder {inner}" in err
    assert f"data: {data / 'train'}: 10 classes, 80 images" in out
    status, _, err = run_cli(deit.main, [*FLAGS, "--data-path", data], capsys)  # train and val agree
    assert status == 0, err


def test_a_symbolic_link_loop_is_not_followed(data, capsys):
    circle = data / "train" / "circle"
    os.symlink("..", circle / "up")  # back to train/: would pull in every class again
    os.symlink(".", circle / "here")
    dataset, _ = image_folder(data / "train", None)
    err = capsys.readouterr().err
    assert len(dataset) == 80 and len({path for path, _ in dataset.samples}) == 80
    assert f"not following {circle / 'up'}" in err and f"not following {circle / 'here'}" in err
    # links to real folders elsewhere are followed
    extra = data / "extra_circles"
    extra.mkdir()
    shutil.copy(circle / "00000.png", extra / "x.png")
    os.symlink(extra, circle / "more")
    dataset, _ = image_folder(data / "train", None)
    assert len(dataset) == 81 and str(circle / "more" / "x.png") in [path for path, _ in dataset.samples]


def test_the_listing_order_is_torchvisions(data):
    from torchvision.datasets import ImageFolder

    nested = data / "train" / "dots" / "sub"
    nested.mkdir()
    shutil.copy(data / "train" / "dots" / "00000.png", nested / "a.png")
    ours, _ = image_folder(data / "train", None)
    assert ours.samples == ImageFolder(str(data / "train")).samples


def test_images_smaller_than_the_crop_are_valid(data, capsys):
    small = data / "train" / "circle" / "00002.png"
    Image.open(small).convert("RGB").resize((16, 16)).save(small)
    output = data.parent / "out"
    status, _, err = run_cli(deit.main, [*FLAGS, "--data-path", data, "--skip-corrupt", "--output_dir", output], capsys)
    assert status == 0, err
    assert "skipped" not in err
    assert json.loads((output / "log.txt").read_text())["train_skipped_images"] == 0


def test_an_image_the_transform_rejects_is_named_not_counted_as_corrupt(data):
    def rejecting(image):
        raise ValueError("Required crop size (64, 64) is larger than input image size (32, 32)")

    dataset, _ = image_folder(data / "train", rejecting)
    for skip in (False, True):
        with pytest.raises(UserError, match=r"image .*/checkerboard/00000.png \(32x32 px\) cannot be transformed"):
            GuardedDataset(dataset, skip_corrupt=skip)[0]


def test_sixteen_bit_greyscale_is_scaled_not_saturated(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(">u2").reshape(8, 8)
    path = tmp_path / "grey16.png"
    write_png(path, 8, 8, 16, 0, b"".join(b"\x00" + row.tobytes() for row in ramp))
    assert Image.open(path).mode == "I;16"
    pixels = np.asarray(read_rgb(path))
    assert pixels.shape == (8, 8, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[..., 0], np.rint(ramp.astype(float) / 257).astype(np.uint8))
    assert (pixels == 255).mean() < 0.05  # PIL's own convert("RGB") leaves 99% of them at 255


def test_a_decompression_bomb_is_named(data, capsys):
    bomb = data / "train" / "dots" / "00003.png"
    write_png(bomb, 30000, 30000)  # 900 megapixels announced in a 60-byte file
    status, _, err = run_cli(deit.main, [*FLAGS, "--data-path", data], capsys)
    assert_one_line_error(status, err, "cannot read image", str(bomb), "DecompressionBombError")


def test_the_fingerprint_tells_other_images_apart(data):
    dataset, _ = image_folder(data / "train", None)
    same, _ = image_folder(data / "train", None)
    fingerprint = data_fingerprint(dataset.classes, dataset.samples, data / "train")
    assert fingerprint == data_fingerprint(same.classes, same.samples, data / "train")
    first = dataset.samples[0][0]
    Image.fromarray(torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8).numpy()).save(first)  # same name
    changed, _ = image_folder(data / "train", None)
    assert data_fingerprint(changed.classes, changed.samples, data / "train") != fingerprint
