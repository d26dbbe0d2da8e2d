"""argparse ``type=`` converters that reject values no run can use, at parse time, naming the flag.

``--lr nan`` or ``-1``, ``--drop-path 1.5``, ``--batch-size 0``, ``--model-ema-decay 2.0``, ``--mixup nan``
or ``--device foo`` would otherwise fail deep inside torch (a traceback) or, worse, train silently
wrong. With these types argparse reports ``argument --drop-path: must lie in [0, 1), got 1.5`` (or
``argument --batch-size: must be at least 1, got 0``) and exits with status 2; the YAML configs of the
timm-style recipes go through the same converters. A flag's range is written once, where it is defined.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bounded(low: float, high: float = math.inf, *, high_open: bool = False) -> Callable[[str], float]:
    """A converter to a finite float in [low, high] ([low, high) with ``high_open``)."""
    closing = ")" if high_open or math.isinf(high) else "]"
    interval = f"[{low:g}, {high:g}{closing}" if not math.isinf(high) else f">= {low:g}"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
        if not inside:
            wording = "lie in" if interval.startswith("[") else "be a finite number"
            raise argparse.ArgumentTypeError(f"must {wording} {interval}, got {text}")
        return value

    convert.__name__ = "number"
    return convert


def at_least(low: int) -> Callable[[str], int]:
    """A converter to a whole number of at least ``low`` (a count: batch size, epochs, workers, ...)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    convert.__name__ = "whole number"
    return convert


def above_zero(text: str) -> float:
    """A converter to a finite number above 0 (a ratio or scale factor)."""
    value = bounded(0.0)(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A converter to a fraction in (0, 1] (a crop ratio: 0 keeps nothing)."""
    value = bounded(0.0, 1.0)(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return value


non_negative = bounded(0.0)  # learning rates, weight decay, mixup/cutmix alphas, jitter strength, ...
probability = bounded(0.0, 1.0)  # probabilities, EMA decay, momentum
below_one = bounded(0.0, 1.0, high_open=True)  # dropout and drop-path rates, label smoothing, Adam betas
positive = at_least(1)  # batch sizes, epochs, image and patch sizes, counts of things
count = at_least(0)  # worker processes, warm-up epochs, checkpoint intervals (0: none)


def device(text: str) -> str:
    """A torch device string: cpu, cuda, cuda:N, mps, ..."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (e.g. cpu, cuda, cuda:1)") from None
    return text
