"""DETR's set criterion: match predictions to targets, then classification and box losses on the matches.

With ``(q, t)`` the matched pairs of an image (:class:`HungarianMatcher`):
- ``loss_ce``: cross-entropy of every prediction against its matched target's class, and against the
  no-object class (index ``num_classes``) for unmatched predictions, that class weighted by ``eos_coef``
  (a weighted mean over all B * Q predictions, as ``F.cross_entropy`` with class weights computes it);
- ``loss_bbox``: L1 distance of the matched normalised ``[cx, cy, w, h]`` boxes, summed, divided by the
  number of target boxes (averaged over processes, at least 1);
- ``loss_giou``: ``1 - GIoU`` of the matched boxes, summed, divided the same way;
- ``loss``: ``ce_coef * loss_ce + bbox_coef * loss_bbox + giou_coef * loss_giou``, the training loss.
Also, for the log only: ``class_error`` (100 - top-1 accuracy of the matched predictions, in %) and
``cardinality_error`` (mean absolute difference between the number of predictions that are not
no-object and the number of targets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from .matcher import HungarianMatcher


class SetCriterion(nn.Module):
    """DETR's loss for ``outputs = {"pred_logits": [B, Q, K+1], "pred_boxes": [B, Q, 4]}``.

    Args:
        num_classes: K, the class count without the no-object class (COCO: 91, the largest id + 1).
        matcher: the Hungarian matcher.
        eos_coef: relative weight of the no-object class in the cross-entropy.
        ce_coef, bbox_coef, giou_coef: weights of the three losses in ``loss``.
    """

    class_weight: torch.Tensor  # a buffer

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        eos_coef: float = 0.1,
        ce_coef: float = 1.0,
        bbox_coef: float = 5.0,
        giou_coef: float = 2.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": ce_coef, "loss_bbox": bbox_coef, "loss_giou": giou_coef}
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)

    def forward(
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """All losses (see the module docstring); ``targets``: per image ``labels`` [n] and ``boxes`` [n, 4]."""
        logits, boxes = outputs["pred_logits"].float(), outputs["pred_boxes"].float()
        matches = self.matcher(logits, boxes, targets)
        batch_index = torch.cat([torch.full_like(rows, i) for i, (rows, _) in enumerate(matches)]).to(logits.device)
        query_index = torch.cat([rows for rows, _ in matches]).to(logits.device)
        matched_labels = torch.cat([t["labels"][cols.to(t["labels"].device)] for t, (_, cols) in zip(targets, matches)])
        matched_targets = torch.cat([t["boxes"][cols.to(t["boxes"].device)] for t, (_, cols) in zip(targets, matches)])

        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        classes[batch_index, query_index] = matched_labels
        loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, self.class_weight.to(logits.device))

        num_boxes = average_box_count(targets, logits.device)
        matched_boxes = boxes[batch_index, query_index]
        loss_bbox = F.l1_loss(matched_boxes, matched_targets.float(), reduction="sum") / num_boxes
        loss_giou = (
            generalized_box_iou_loss(
                box_convert(matched_boxes, "cxcywh", "xyxy"),
                box_convert(matched_targets.float(), "cxcywh", "xyxy"),
                reduction="sum",
            )
            / num_boxes
        )
        losses = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        losses["loss"] = sum(self.weights[name] * value for name, value in losses.items())
        with torch.no_grad():
            hits = (logits[batch_index, query_index].argmax(-1) == matched_labels).float()
            losses["class_error"] = 100 - 100 * hits.mean() if hits.numel() else torch.zeros((), device=logits.device)
            predicted = (logits.argmax(-1) != self.num_classes).sum(1).float()
            counts = torch.tensor([float(len(t["labels"])) for t in targets], device=logits.device)
            losses["cardinality_error"] = F.l1_loss(predicted, counts)
        return losses


def average_box_count(targets: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Target boxes of this process's batch, averaged over all processes, at least 1 (DETR's normaliser)."""
    count = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
        world = torch.distributed.get_world_size()
    return max(count.item() / world, 1.0)
