"""EfficientTrain's low-frequency crop: which frequencies survive, with what amplitude, shape and energy."""

from __future__ import annotations

import math

import pytest
import torch

from toe.data.fourier import FourierCrop, fourier_crop


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates [n, n] of an n x n image, in float64."""
    return torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")


def waves(n: int, terms: list[tuple[float, int, int, float]]) -> torch.Tensor:
    """Sum of amplitude * cos(2 pi (fy*y + fx*x) / n + phase) for (amplitude, fy, fx, phase) in ``terms``."""
    y, x = grid(n)
    return sum(a * torch.cos(2 * math.pi * (fy * y + fx * x) / n + p) for a, fy, fx, p in terms)


def band_limited(shape: tuple[int, ...], n: int, below: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images [*shape, n, n] as (low, high): low holds frequencies strictly below ``below`` cycles per
    image along both axes, high those above it along at least one axis (exactly ``below`` is left out)."""
    noise = torch.fft.fft2(
        torch.randn(*shape, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )
    freq = torch.fft.fftfreq(n, d=1 / n).abs()
    low_mask = (freq[:, None] < below) & (freq[None, :] < below)
    high_mask = (freq[:, None] > below) | (freq[None, :] > below)
    return torch.fft.ifft2(noise * low_mask).real, torch.fft.ifft2(noise * high_mask).real


def test_low_sinusoids_survive_with_their_amplitude_and_high_ones_vanish():
    n, size = 32, 16  # the crop keeps frequencies below 8 cycles per image
    kept = [(0.7, 0, 0, 0.0), (1.0, 0, 3, 0.0), (0.5, 2, 0, 0.3), (0.8, 5, 7, 1.1), (0.6, -6, 4, -0.4)]
    lost = [(0.9, 0, 11, 0.0), (1.2, 13, 0, 0.5), (0.7, 9, 13, 0.2), (0.4, 3, 15, 0.0)]
    image = waves(n, kept + lost)
    out = fourier_crop(image[None, None], size)[0, 0]
    # the kept waves, sampled on the small grid: same amplitude, phase and cycles per image
    torch.testing.assert_close(out, waves(size, kept), rtol=0, atol=1e-12)
    # the lost waves alone give nothing
    assert fourier_crop(waves(n, lost)[None], size).abs().max() < 1e-12


def test_band_limited_images_are_exactly_decimated_and_keep_their_energy():
    """Content below size/2 cycles: the crop equals taking every (n/size)-th pixel; content above is removed."""
    low, high = band_limited((4, 3), 32, below=8, seed=0)
    out = fourier_crop(low + high, 16)
    torch.testing.assert_close(out, low[..., ::2, ::2], rtol=0, atol=1e-12)
    # energy: the mean square of the output equals that of the low-pass content (Parseval), per image
    torch.testing.assert_close(out.pow(2).mean((-2, -1)), low.pow(2).mean((-2, -1)), rtol=1e-10, atol=0)
    assert (out.pow(2).mean() / (low + high).pow(2).mean()).item() < 0.5  # most of white noise's energy is high


def test_constant_images_keep_their_value_so_the_crop_commutes_with_normalisation():
    images = torch.rand(2, 3, 1, 1).expand(2, 3, 24, 24).contiguous()
    torch.testing.assert_close(fourier_crop(images, 16), images[..., :16, :16])
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    natural = torch.rand(2, 3, 24, 24)
    torch.testing.assert_close(fourier_crop((natural - mean) / std, 12), (fourier_crop(natural, 12) - mean) / std)


@pytest.mark.parametrize("n, size", [(32, 16), (32, 24), (224, 160), (224, 192), (33, 20), (20, 7)])
def test_shapes_dtypes_and_odd_sizes(n, size):
    images = torch.randn(2, 3, n, n)
    out = fourier_crop(images, size)
    assert out.shape == (2, 3, size, size) and out.dtype == torch.float32
    half = fourier_crop(images.half(), size)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), fourier_crop(images.half().float(), size), rtol=1e-3, atol=1e-3)
    # the mean of every image is preserved (the zero frequency is always kept, with the energy scaling)
    torch.testing.assert_close(out.mean((-2, -1)), images.mean((-2, -1)), rtol=1e-4, atol=1e-5)


def test_same_size_is_the_identity_and_bad_sizes_are_refused():
    images = torch.randn(1, 3, 16, 16)
    assert fourier_crop(images, 16) is images
    for size in (0, 17):
        with pytest.raises(ValueError, match="crop size"):
            fourier_crop(images, size)


def test_batch_hook_crops_images_and_passes_targets_through():
    images, targets = torch.randn(4, 3, 32, 32), (torch.arange(4), {"extra": torch.ones(4)})
    out_images, out_targets = FourierCrop(16)(images, targets)
    assert out_images.shape == (4, 3, 16, 16) and out_targets is targets
    torch.testing.assert_close(out_images, fourier_crop(images, 16))
