"""Training losses: the base classification loss of DeiT and its distillation wrapper.

Every criterion is called as ``criterion(inputs, outputs, targets)`` so that a teacher can see the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

DISTILLATION_TYPES = ("none", "soft", "hard")


class BaseLoss(nn.Module):
    """Wrap a loss of (outputs, targets) into the engine's (inputs, outputs, targets) signature."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs, targets)


class BinaryCrossEntropy(nn.Module):
    """DeiT III's BCE on (soft or hard) targets."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 1:
            targets = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
        return F.binary_cross_entropy_with_logits(outputs, targets)


def classification_loss(mixup_active: bool, smoothing: float, bce: bool) -> nn.Module:
    """DeiT's choice: BCE if asked, soft-target CE under mixup/cutmix, else (label-smoothed) CE."""
    if bce:
        return BinaryCrossEntropy()
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


class DistillationLoss(nn.Module):
    """(1 - alpha) * base(cls logits) + alpha * distillation(dist logits, teacher).

    The student returns ``(cls_logits, dist_logits)`` in training. ``soft``: KL divergence at
    temperature tau, times tau^2, divided by the number of logits (as DeiT); ``hard``: cross-entropy
    on the teacher's arg-max.
    """

    def __init__(self, base: nn.Module, teacher: nn.Module, kind: str, alpha: float, tau: float) -> None:
        super().__init__()
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, alpha, tau

    def forward(self, inputs: torch.Tensor, outputs, targets: torch.Tensor) -> torch.Tensor:
        cls_logits, dist_logits = outputs
        base = self.base(cls_logits, targets)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        if self.kind == "soft":
            t = self.tau
            distill = (
                F.kl_div(
                    F.log_softmax(dist_logits / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="sum",
                    log_target=True,
                )
                * (t * t)
                / dist_logits.numel()
            )
        else:
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        return base * (1 - self.alpha) + distill * self.alpha
