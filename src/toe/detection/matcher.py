"""DETR's Hungarian matcher: a one-to-one assignment of predictions to ground-truth boxes per image.

The cost of giving prediction q to target t is
``cost_class * (-p_q[class_t]) + cost_bbox * |box_q - box_t|_1 + cost_giou * (-GIoU(box_q, box_t))``
with boxes as normalised ``[cx, cy, w, h]`` (L1) and converted to corners for the GIoU; the assignment
of least total cost is scipy's :func:`scipy.optimize.linear_sum_assignment`.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from ..engine.loop import TrainingDiverged


class HungarianMatcher(nn.Module):
    """Match the ``Q`` predictions of each image to its ``n`` targets (``min(Q, n)`` pairs).

    Args:
        cost_class: weight of the class cost (minus the predicted probability of the target class).
        cost_bbox: weight of the L1 distance between normalised ``[cx, cy, w, h]`` boxes.
        cost_giou: weight of minus the generalised IoU of the boxes.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 1.0, cost_giou: float = 1.0) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("cost_class, cost_bbox and cost_giou cannot all be 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, target_boxes: torch.Tensor):
        """Cost [Q, n] of one image: ``logits`` [Q, K+1], ``boxes`` [Q, 4], ``labels`` [n], ``target_boxes`` [n, 4]."""
        probability = logits.float().softmax(-1)
        boxes, target_boxes = boxes.float(), target_boxes.float()
        cost = self.cost_bbox * torch.cdist(boxes, target_boxes, p=1)
        cost = cost - self.cost_class * probability[:, labels]
        giou = generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"))
        return cost - self.cost_giou * giou

    @torch.no_grad()
    def forward(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Match ``logits`` [B, Q, K+1] and ``boxes`` [B, Q, 4] to ``targets`` (per image ``labels`` [n]
        and ``boxes`` [n, 4]).

        Returns, per image, ``(prediction_index, target_index)``: two int64 tensors of length
        ``min(Q, n)``, prediction indices ascending.
        """
        if not (torch.isfinite(logits).all() and torch.isfinite(boxes).all()):  # scipy would fail on NaN costs
            raise TrainingDiverged(
                "the detector's outputs became NaN or infinite (a diverging run, e.g. too high a --lr, or weights "
                "that hold NaN); stopped, the last checkpoint is kept: try a lower --lr or --clip_max_norm"
            )
        matches = []
        for image_logits, image_boxes, target in zip(logits, boxes, targets):
            cost = self.cost_matrix(image_logits, image_boxes, target["labels"], target["boxes"])
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches
