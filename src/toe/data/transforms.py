"""Image transforms of the DeiT recipe, built from timm and torchvision.

Train: timm ``create_transform`` (random resized crop, flip, RandAugment, colour jitter, random erasing);
for inputs <= 32 px the crop is a RandomCrop with 4 px padding (DeiT's CIFAR-size rule; images still smaller
than the crop are padded up to it, where upstream stops). ``three_augment`` is DeiT III's 3-Augment as DeiT
writes it: timm's random resized crop (bicubic), flip, one of grayscale / solarize / PIL Gaussian blur of
radius uniform in (0.1, 2.0), then colour jitter. Eval: resize to
input / crop_ratio (bicubic), centre crop; for inputs <= 32 px, as DeiT, no resize and no crop (images
of another size, where upstream stops, are resized and cropped as for larger inputs).
"""

from __future__ import annotations

import random

from PIL import Image, ImageFilter
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T


def build_train_transform(
    input_size: int,
    color_jitter: float = 0.3,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    interpolation: str = "bicubic",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    three_augment: bool = False,
    simple_random_crop: bool = False,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> T.Compose:
    """The training transform of a DeiT-style recipe."""
    if three_augment:
        return _three_augment(input_size, color_jitter, simple_random_crop, mean, std)
    transform = create_transform(
        input_size=input_size,
        is_training=True,
        color_jitter=color_jitter,
        auto_augment=None if auto_augment in (None, "", "none") else auto_augment,
        interpolation=interpolation,
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
        mean=mean,
        std=std,
    )
    if input_size <= 32:  # images smaller than the crop are padded up to it (upstream stops on them)
        transform.transforms[0] = T.RandomCrop(input_size, padding=4, pad_if_needed=True)
    return transform


def build_eval_transform(
    input_size: int,
    crop_ratio: float = 0.875,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
) -> T.Compose:
    """Resize to input / crop_ratio (bicubic), centre crop, normalise; inputs <= 32 px: normalise only."""
    resize_crop = T.Compose(
        [T.Resize(int(input_size / crop_ratio), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(input_size)]
    )
    fit = _UnlessSize(input_size, resize_crop) if input_size <= 32 else resize_crop
    return T.Compose([fit, T.ToTensor(), T.Normalize(mean, std)])


class _UnlessSize:
    """Apply ``transform`` to PIL images that are not ``size`` x ``size`` (DeiT's small-input eval)."""

    def __init__(self, size: int, transform) -> None:
        self.size, self.transform = size, transform

    def __call__(self, image):
        return image if image.size == (self.size, self.size) else self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, transform={self.transform})"


class PILGaussianBlur:
    """DeiT III's blur: PIL's Gaussian blur with a radius drawn uniformly from (``radius_min``, ``radius_max``)
    (``random``'s RNG), not truncated to a fixed kernel."""

    def __init__(self, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.radius_min, self.radius_max = radius_min, radius_max

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(radius_min={self.radius_min}, radius_max={self.radius_max})"


def _three_augment(input_size: int, color_jitter: float, simple_random_crop: bool, mean, std) -> T.Compose:
    if simple_random_crop:
        crop = [
            T.Resize(input_size, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomCrop(input_size, padding=4, padding_mode="reflect"),
        ]
    else:
        crop = [RandomResizedCropAndInterpolation(input_size, scale=(0.08, 1.0), interpolation="bicubic")]
    steps = crop + [
        T.RandomHorizontalFlip(),
        T.RandomChoice([T.Grayscale(num_output_channels=3), T.RandomSolarize(128, p=1.0), PILGaussianBlur()]),
    ]
    if color_jitter:
        steps.append(T.ColorJitter(color_jitter, color_jitter, color_jitter))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])
