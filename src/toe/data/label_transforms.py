"""Label-aware training transforms for token labeling: the image and its label map stay aligned.

A label map [2, 5, h, w] (top-5 scores and class indices per location) covers the whole original image.
The transforms carry ``(image, label_map, box)``, where ``box = (x0, y0, x1, y1)`` is the region of the
label map's frame (coordinates normalised to [0, 1]) that the current image shows. In TokenLabeling's
order:
- a horizontal flip flips the image and the map (and mirrors the box);
- RandAugment (or, without it, colour jitter) changes the whole image; only RandAugment's spatial ops
  (rotate, shear, translate) touch the map: the same geometric change resamples the map (nearest cell, so
  score/index pairs stay together), and locations whose source lies outside the image get score 0;
- the random resized crop comes last: it crops the image and records the crop in ``box``; the map is not
  cropped (the targets are roi-aligned from the box on the device, see ``token_label.TokenLabelTargets``).
All randomness comes from ``random``, ``numpy`` and ``torch``'s global RNGs, which the loader seeds per
sample (``data/sampling.py``).
"""

from __future__ import annotations

import math
import random

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.auto_augment import RandAugment, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
from torchvision import transforms as T
from torchvision.transforms import functional as F

from ..errors import UserError

Box = tuple[float, float, float, float]
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)
SPATIAL_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel")


class RandomResizedCropWithBox(RandomResizedCropAndInterpolation):
    """timm's random resized crop that also narrows ``box`` to the cropped region."""

    def __call__(  # type: ignore[override]  # timm's takes the image alone; this one the label map and box too
        self, img: Image.Image, label_map: torch.Tensor, box: Box
    ) -> tuple[Image.Image, torch.Tensor, Box]:
        top, left, height, width = self.get_params(img, self.scale, self.ratio)
        interpolation = self.interpolation
        if isinstance(interpolation, (tuple, list)):
            interpolation = random.choice(interpolation)
        img_w, img_h = img.size
        x0, y0, x1, y1 = box
        bw, bh = x1 - x0, y1 - y0
        crop = (
            x0 + bw * left / img_w,
            y0 + bh * top / img_h,
            x0 + bw * (left + width) / img_w,
            y0 + bh * (top + height) / img_h,
        )
        return F.resized_crop(img, top, left, height, width, list(self.size), interpolation), label_map, crop


class HorizontalFlipWithLabels:
    """Flip the image and the label map with probability ``p``; the box is mirrored."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image, label_map: torch.Tensor, box: Box) -> tuple[Image.Image, torch.Tensor, Box]:
        if torch.rand(1).item() >= self.p:
            return img, label_map, box
        x0, y0, x1, y1 = box
        return F.hflip(img), label_map.flip(-1), (1.0 - x1, y0, 1.0 - x0, y1)


class _RecordCall:
    """Stands in for a spatial RandAugment op's image function: applies it and records its arguments."""

    def __init__(self, name: str, fn, calls: list) -> None:
        self.name, self.fn, self.calls = name, fn, calls

    def __call__(self, img: Image.Image, *level_args, **kwargs) -> Image.Image:
        self.calls.append((self.name, level_args, img.size))
        return self.fn(img, *level_args, **kwargs)


class LabelRandAugment:
    """A timm :class:`RandAugment` whose spatial ops also move the label map (see the module docstring)."""

    def __init__(self, rand_augment: RandAugment) -> None:
        self.rand_augment = rand_augment
        self.calls: list = []
        for op in rand_augment.ops:
            if op.name in SPATIAL_OPS:
                op.aug_fn = _RecordCall(op.name, op.aug_fn, self.calls)

    def __call__(self, img: Image.Image, label_map: torch.Tensor, box: Box) -> tuple[Image.Image, torch.Tensor, Box]:
        self.calls.clear()
        img = self.rand_augment(img)
        for name, level_args, size in self.calls:
            label_map = warp_label_map(label_map, box, _source_matrix(name, level_args, size))
        return img, label_map, box


def warp_label_map(label_map: torch.Tensor, box: Box, matrix: torch.Tensor) -> torch.Tensor:
    """Resample ``label_map`` [2, 5, h, w] after a geometric change of the image that shows ``box``.

    ``matrix`` (3 x 3) maps a point of the new image to the point of the old image it shows, both in
    coordinates normalised to [0, 1] over the image. Every map cell inside the box takes the cell that its
    source point falls in (nearest); a source outside the old image (fill pixels) gives score 0.
    """
    h, w = label_map.shape[-2:]
    x0, y0, x1, y1 = box
    ys = ((torch.arange(h, dtype=torch.float64) + 0.5) / h - y0) / (y1 - y0)
    xs = ((torch.arange(w, dtype=torch.float64) + 0.5) / w - x0) / (x1 - x0)
    uy, ux = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack((ux.reshape(-1), uy.reshape(-1), torch.ones(h * w, dtype=torch.float64)))
    src_x, src_y, _ = matrix.to(torch.float64) @ points
    inside = (src_x >= 0) & (src_x < 1) & (src_y >= 0) & (src_y < 1)
    cols = ((x0 + (x1 - x0) * src_x) * w).floor().long().clamp(0, w - 1)
    rows = ((y0 + (y1 - y0) * src_y) * h).floor().long().clamp(0, h - 1)
    warped = label_map[:, :, rows, cols] * inside.to(label_map.dtype)
    return warped.view_as(label_map)


def _source_matrix(name: str, level_args: tuple, size: tuple[int, int]) -> torch.Tensor:
    """The 3 x 3 output -> input map of one timm RandAugment spatial op, in normalised coordinates.

    timm's ops are PIL transforms whose (a, b, c, d, e, f) map output pixel coordinates to input ones;
    ``Rotate`` is PIL's rotation by ``degrees`` counter-clockwise about the image centre.
    """
    width, height = size
    (value,) = level_args
    if name == "Rotate":
        angle = -math.radians(value)
        cos, sin = math.cos(angle), math.sin(angle)
        cx, cy = width / 2, height / 2
        pixel = [[cos, sin, cx - cos * cx - sin * cy], [-sin, cos, cy + sin * cx - cos * cy]]
    elif name == "ShearX":
        pixel = [[1, value, 0], [0, 1, 0]]
    elif name == "ShearY":
        pixel = [[1, 0, 0], [value, 1, 0]]
    elif name in ("TranslateX", "TranslateY"):
        pixel = [[1, 0, value if name == "TranslateX" else 0], [0, 1, value if name == "TranslateY" else 0]]
    else:  # TranslateXRel / TranslateYRel: a fraction of the image size
        dx, dy = (value * width, 0) if name == "TranslateXRel" else (0, value * height)
        pixel = [[1, 0, dx], [0, 1, dy]]
    scale = torch.diag(torch.tensor([width, height, 1.0], dtype=torch.float64))
    matrix = torch.tensor(pixel + [[0, 0, 1]], dtype=torch.float64)
    return torch.linalg.inv(scale) @ matrix @ scale


class ImageOnly:
    """A transform of the image alone (colour jitter) in the label-aware steps."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, img: Image.Image, label_map: torch.Tensor, box: Box) -> tuple[Image.Image, torch.Tensor, Box]:
        return self.transform(img), label_map, box


class TokenLabelTransform:
    """``(image, label_map) -> (image tensor [3, S, S], label_map [2, 5, h, w], box [4])``: the label-aware
    steps, then image-only tensor conversion, normalisation and random erasing."""

    def __init__(self, label_steps: list, image_steps: list) -> None:
        self.label_steps, self.image_steps = label_steps, T.Compose(image_steps)

    def __call__(self, img: Image.Image, label_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        box = FULL_BOX
        for step in self.label_steps:
            img, label_map, box = step(img, label_map, box)
        return self.image_steps(img), label_map, torch.tensor(box, dtype=torch.float32)


def build_token_label_transform(
    input_size: int,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    interpolation: str = "random",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    color_jitter: float = 0.4,
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> TokenLabelTransform:
    """The training transform of the LV-ViT recipe with token labels, in TokenLabeling's order: flip,
    RandAugment of the whole image and its map (colour jitter instead when there is no RandAugment, as in
    timm), random resized crop last; then tensor, normalisation, random erasing.

    ``auto_augment`` must be a ``rand-...`` policy or None/'none'.
    """
    steps: list = [HorizontalFlipWithLabels(hflip)] if hflip > 0 else []
    if auto_augment not in (None, "", "none"):
        if not auto_augment.startswith("rand"):
            raise UserError(f"--aa {auto_augment}: token labeling supports RandAugment ('rand-...') or 'none'")
        params = {
            "translate_const": int(input_size * 0.45),
            "img_mean": tuple(min(255, round(255 * x)) for x in mean),
        }
        if interpolation != "random":
            params["interpolation"] = str_to_pil_interp(interpolation)
        steps.append(LabelRandAugment(rand_augment_transform(auto_augment, params)))
    elif color_jitter:
        steps.append(ImageOnly(T.ColorJitter(color_jitter, color_jitter, color_jitter)))
    steps.append(RandomResizedCropWithBox(input_size, scale, ratio, interpolation))
    image_steps: list = [T.ToTensor(), T.Normalize(mean, std)]
    if re_prob > 0:
        image_steps.append(RandomErasing(re_prob, mode=re_mode, max_count=re_count, device="cpu"))
    return TokenLabelTransform(steps, image_steps)
