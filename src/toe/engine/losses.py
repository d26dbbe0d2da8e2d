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
    """DeiT III's BCE: logits [B, K] against class indices [B] or (mixed) soft targets [B, K], binarised as
    DeiT does (every class with a target above 0 is a positive, ``targets.gt(0.0)``)."""

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 1:
            targets = F.one_hot(targets, outputs.shape[-1])
        return F.binary_cross_entropy_with_logits(outputs, targets.gt(0.0).to(outputs.dtype))


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


class TokenLabelCrossEntropy(nn.Module):
    """LV-ViT's token labeling loss on the targets of ``toe.data.token_label.TokenLabelTargets``.

    ``cls_weight * soft-CE(class logits, class target) + dense_weight * soft-CE over every token of the
    auxiliary head``. The model's training output is ``(cls [B, K], aux [B, P, K], lam)``: with MixToken the
    aux logits are already un-mixed and each class target becomes ``lam * own + (1 - lam) * flipped``
    (the batch-flipped sample's). A plain logits tensor [B, K] (token-label size 1) gets the class term only.
    """

    def __init__(self, cls_weight: float = 1.0, dense_weight: float = 1.0) -> None:
        super().__init__()
        self.cls_weight, self.dense_weight = cls_weight, dense_weight
        self.soft_ce = SoftTargetCrossEntropy()

    def forward(self, inputs: torch.Tensor, outputs, targets: dict) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.cls_weight * self.soft_ce(outputs, targets["cls"])
        cls_logits, aux_logits, lam = outputs
        cls_target = targets["cls"]
        if lam < 1.0:
            cls_target = lam * cls_target + (1.0 - lam) * cls_target.flip(0)
        dense_target = targets["dense"]
        if dense_target.shape != aux_logits.shape:
            raise ValueError(f"dense targets {list(dense_target.shape)} do not fit aux logits {list(aux_logits.shape)}")
        classes = aux_logits.shape[-1]
        dense = self.soft_ce(aux_logits.reshape(-1, classes), dense_target.reshape(-1, classes))
        return self.cls_weight * self.soft_ce(cls_logits, cls_target) + self.dense_weight * dense
