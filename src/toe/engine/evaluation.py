"""Evaluation, a collaborator of the run: what is measured on the validation loader, and which of its
numbers decides the best checkpoints.

The engine calls ``evaluation(model, loader, precision, dist, ...)`` for the model and for its EMA and logs
the returned numbers as ``test_<name>`` / ``test_ema_<name>``; ``evaluation.metric`` names the number
(higher is better) that selects best_checkpoint.pth / best_ema_checkpoint.pth. :class:`Classification`
(top-1/top-5) is the default; a recipe with another task (e.g. detection AP) passes its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from timm.utils import accuracy
from torch import nn
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_reduce_sum
from .logger import progress
from .precision import Precision
from .transfer import to_device


class Evaluation(Protocol):
    """What the engine needs from an evaluation."""

    metric: str  # the key of the returned numbers that selects the best checkpoints (higher is better)

    def __call__(
        self,
        model: nn.Module,
        loader: DataLoader,
        precision: Precision,
        dist: DistInfo,
        *,
        reduce: bool = False,
        prepare: Callable | None = None,
        show_progress: bool = True,
        description: str = "eval",
    ) -> dict[str, float]: ...


class Classification:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) of image classification; best by top-1."""

    metric = "acc1"

    def __call__(self, model, loader, precision, dist, **options) -> dict[str, float]:
        return evaluate(model, loader, precision, dist, **options)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    precision: Precision,
    dist: DistInfo,
    *,
    reduce: bool = False,
    prepare: Callable | None = None,
    show_progress: bool = True,
    description: str = "eval",
) -> dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 accuracy (%) over ``loader``; ``reduce`` sums over processes.

    ``prepare``: (images, targets) -> (images, targets) on the device before the forward (e.g. a Fourier crop).
    """
    model.eval()
    device = dist.device
    loss_sum = correct1 = correct5 = count = 0.0
    for images, targets in progress(loader, len(loader), description, dist.is_main and show_progress):
        images, targets = to_device(images, device), to_device(targets, device)
        if prepare is not None:
            images, targets = prepare(images, targets)
        with precision.autocast():
            outputs = model(images)
        outputs = outputs.float()
        acc1, acc5 = accuracy(outputs, targets, topk=(1, min(5, outputs.shape[1])))
        n = images.shape[0]
        loss_sum += nn.functional.cross_entropy(outputs, targets, reduction="sum").item()
        correct1 += acc1.item() * n / 100
        correct5 += acc5.item() * n / 100
        count += n
    if reduce:
        loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], dist, device)
    return {"loss": loss_sum / count, "acc1": 100 * correct1 / count, "acc5": 100 * correct5 / count}
