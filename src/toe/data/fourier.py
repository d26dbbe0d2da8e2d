"""EfficientTrain's low-frequency cropping: keep the centre of an image's 2-D spectrum, giving a smaller image.

An image of H x W pixels has frequencies -H/2 .. H/2 - 1 along its height (likewise its width). Keeping the
``size`` x ``size`` lowest (the centre of the shifted spectrum) and transforming back with an inverse FFT of
that size gives a ``size`` x ``size`` image that holds exactly the low-frequency content of the original:
a sinusoid below size/2 cycles per image survives with its amplitude, one above size/2 disappears.

The result is multiplied by (size * size) / (H * W). The unnormalised FFT pair would otherwise scale pixel
values by H * W / size^2; with this factor a constant image keeps its value and the mean energy per pixel
equals that of the low-pass filtered original (Parseval), so the crop commutes with per-channel
normalisation and can run on normalised batches. This is the energy scaling of EfficientTrain.

:class:`FourierCrop` is the callable the training loop (``StepHooks.prepare``) and the evaluation
(``TrainingRun.eval_prepare``) apply to every batch on the device.
"""

from __future__ import annotations

import torch


def fourier_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Low-pass and shrink ``images`` [..., H, W] to [..., size, size] by cropping their 2-D spectrum.

    Works on any leading dimensions (typically a batch [B, C, H, W]). Computed in float32 (or float64 for
    float64 input) and returned in the input's dtype. ``size`` equal to H and W returns ``images`` itself.
    """
    height, width = images.shape[-2:]
    if not 0 < size <= min(height, width):
        raise ValueError(
            f"the crop size must lie in [1, {min(height, width)}] for {height} x {width} images, got {size}"
        )
    if size == height == width:
        return images
    dtype = images.dtype
    work = images if dtype == torch.float64 else images.float()
    spectrum = torch.fft.fftshift(torch.fft.fft2(work), dim=(-2, -1))
    top, left = height // 2 - size // 2, width // 2 - size // 2
    low = spectrum[..., top : top + size, left : left + size]
    cropped = torch.fft.ifft2(torch.fft.ifftshift(low, dim=(-2, -1))).real
    return (cropped * (size * size / (height * width))).to(dtype)


class FourierCrop:
    """``(images, targets) -> (fourier_crop(images, size), targets)``: a batch hook for the training loop."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, images: torch.Tensor, targets):
        return fourier_crop(images, self.size), targets

    def __repr__(self) -> str:
        return f"FourierCrop({self.size})"
