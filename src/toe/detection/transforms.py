"""DETR's detection augmentation as YOLOS uses it: transforms of a PIL image together with its target.

A target is a dict with ``boxes`` [n, 4] (absolute ``[x0, y0, x1, y1]`` until :class:`ToNormalizedTensor`,
then normalised ``[cx, cy, w, h]``), ``labels`` [n], ``area`` [n], ``iscrowd`` [n] and ``size`` [2]
(height, width of the current image). Training (``train_transforms``): random horizontal flip, then with
probability 1/2 a random resize of the shorter side to one of the scales, else a resize to 400/500/600,
a random crop of 384-600 px per side and the random resize; evaluation: the shorter side to
``eval_size``. Like YOLOS (not DETR), resized sides are rounded down to a multiple of the patch size so
that every image is a whole number of patches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import RandomCrop

from .boxes import normalize_xyxy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_SCALES = tuple(range(256, 609, 16))  # --backbone_name tiny
SCALES = tuple(range(480, 801, 16))  # the other backbones
CROP_RESIZE = (400, 500, 600)
CROP_RANGE = (384, 600)

Transform = Callable[[Image.Image, dict], tuple]


def hflip(image: Image.Image, target: dict) -> tuple[Image.Image, dict]:
    """Mirror the image and its boxes left-right."""
    width = image.width
    target = dict(target)
    boxes = target["boxes"]
    target["boxes"] = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1)
    return F.hflip(image), target


def resized_size(width: int, height: int, size: int, max_size: int | None, multiple: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to ``size`` (less if the longer side would pass
    ``max_size``), both rounded down to a multiple of ``multiple`` (at least one multiple), as YOLOS does."""
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        new_height, new_width = height, width
    elif width < height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_height, new_width = size, int(size * width / height)
    return max(multiple, new_height - new_height % multiple), max(multiple, new_width - new_width % multiple)


def resize(
    image: Image.Image, target: dict, size: int, max_size: int | None, multiple: int
) -> tuple[Image.Image, dict]:
    """Scale the image (bilinear) and its boxes and areas to :func:`resized_size`."""
    new_height, new_width = resized_size(image.width, image.height, size, max_size, multiple)
    ratio_w, ratio_h = new_width / image.width, new_height / image.height
    target = dict(target)
    target["boxes"] = target["boxes"] * torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    target["area"] = target["area"] * (ratio_w * ratio_h)
    target["size"] = torch.tensor([new_height, new_width])
    return F.resize(image, [new_height, new_width]), target


def crop(image: Image.Image, target: dict, top: int, left: int, height: int, width: int) -> tuple[Image.Image, dict]:
    """Cut out a region; boxes are clipped to it and those left without area are dropped."""
    target = dict(target)
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
    boxes = torch.min(boxes.reshape(-1, 2, 2), torch.tensor([width, height], dtype=torch.float32)).clamp(min=0)
    keep = (boxes[:, 1] > boxes[:, 0]).all(dim=1)
    target["area"] = (boxes[:, 1] - boxes[:, 0]).prod(dim=1)
    target["boxes"] = boxes.reshape(-1, 4)
    for field in ("boxes", "labels", "area", "iscrowd"):
        target[field] = target[field][keep]
    target["size"] = torch.tensor([height, width])
    return F.crop(image, top, left, height, width), target


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Image.Image, target: dict) -> tuple[Image.Image, dict]:
        return hflip(image, target) if random.random() < self.p else (image, target)


class RandomResize:
    """Resize the shorter side to one of ``sizes`` (chosen uniformly)."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None, multiple: int = 16) -> None:
        self.sizes, self.max_size, self.multiple = list(sizes), max_size, multiple

    def __call__(self, image: Image.Image, target: dict) -> tuple[Image.Image, dict]:
        return resize(image, target, random.choice(self.sizes), self.max_size, self.multiple)


class RandomSizeCrop:
    """Crop a random region whose sides are drawn uniformly in [min_size, max_size] (at most the image's)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: Image.Image, target: dict) -> tuple[Image.Image, dict]:
        width = random.randint(min(self.min_size, image.width), min(image.width, self.max_size))
        height = random.randint(min(self.min_size, image.height), min(image.height, self.max_size))
        top, left, height, width = RandomCrop.get_params(image, (height, width))
        return crop(image, target, top, left, height, width)


class RandomSelect:
    """``first`` with probability ``p``, else ``second``."""

    def __init__(self, first: Transform, second: Transform, p: float = 0.5) -> None:
        self.first, self.second, self.p = first, second, p

    def __call__(self, image: Image.Image, target: dict) -> tuple:
        return self.first(image, target) if random.random() < self.p else self.second(image, target)


class ToNormalizedTensor:
    """PIL image -> normalised float tensor [3, H, W]; boxes -> normalised ``[cx, cy, w, h]``."""

    def __call__(self, image: Image.Image, target: dict) -> tuple[torch.Tensor, dict]:
        tensor = F.normalize(F.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
        target = dict(target)
        target["boxes"] = normalize_xyxy(target["boxes"], tensor.shape[1], tensor.shape[2])
        return tensor, target


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target


def scaled(sizes: Sequence[int], factor: float) -> list[int]:
    """Pixel sizes times ``factor`` (rounded, at least 1)."""
    return [max(1, round(size * factor)) for size in sizes]


def train_transforms(backbone_name: str, patch_size: int, aug_scale: float = 1.0) -> Compose:
    """YOLOS's training augmentation; ``aug_scale`` multiplies every pixel size (1.0: upstream's)."""
    scales = scaled(TINY_SCALES if "tiny" in backbone_name else SCALES, aug_scale)
    max_size = scales[-1] * 1333 // 800
    crop_min, crop_max = scaled(CROP_RANGE, aug_scale)
    return Compose(
        [
            RandomHorizontalFlip(),
            RandomSelect(
                RandomResize(scales, max_size, patch_size),
                Compose(
                    [
                        RandomResize(scaled(CROP_RESIZE, aug_scale), None, patch_size),
                        RandomSizeCrop(crop_min, crop_max),
                        RandomResize(scales, max_size, patch_size),
                    ]
                ),
            ),
            ToNormalizedTensor(),
        ]
    )


def single_scale_train_transforms(size: int, patch_size: int) -> Compose:
    """Training at one size (``--single-scale``, not upstream): random horizontal flip, then the shorter side to
    ``size`` as in evaluation. Images of one shape then need no padding in a batch (YOLOS has no padding mask)."""
    return Compose([RandomHorizontalFlip(), *eval_transforms(size, patch_size).transforms])


def eval_transforms(eval_size: int, patch_size: int) -> Compose:
    """YOLOS's evaluation transform: the shorter side to ``eval_size`` (longer side at most 1333/800 of it)."""
    return Compose([RandomResize([eval_size], eval_size * 1333 // 800, patch_size), ToNormalizedTensor()])
