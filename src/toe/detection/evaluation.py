"""COCO box evaluation of a detector with the official metrics (pycocotools' COCOeval).

Every [DET] token is one detection: its score is the highest class probability other than "no
object", its box the predicted one scaled back to the image's original size (as DETR's PostProcess).
``COCO_METRICS`` names the 12 numbers of ``COCOeval.stats`` (AP at IoU .50:.95, .50, .75, small,
medium, large; AR at 1, 10, 100 detections, small, medium, large).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..engine import DistInfo, Precision, to_device
from ..engine.distributed import gather_objects
from ..engine.logger import progress
from .boxes import denormalize_cxcywh, xyxy_to_coco

COCO_METRICS = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar1",
    "ar10",
    "ar100",
    "ar_small",
    "ar_medium",
    "ar_large",
)


def detections(outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> list[dict]:
    """COCO result entries (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``) of a batch's
    ``outputs`` (``pred_logits`` [B, D, K+1], ``pred_boxes`` [B, D, 4]), in the targets' original sizes."""
    probability = F.softmax(outputs["pred_logits"].float(), dim=-1)
    scores, labels = probability[..., :-1].max(dim=-1)
    sizes = torch.stack([t["orig_size"] for t in targets]).to(scores.device)
    boxes = xyxy_to_coco(denormalize_cxcywh(outputs["pred_boxes"].float(), sizes).flatten(0, 1)).view(
        scores.shape + (4,)
    )
    results: list[dict] = []
    for target, image_scores, image_labels, image_boxes in zip(targets, scores.cpu(), labels.cpu(), boxes.cpu()):
        image_id = int(target["image_id"])
        results.extend(
            {"image_id": image_id, "category_id": int(label), "bbox": [float(v) for v in box], "score": float(score)}
            for score, label, box in zip(image_scores, image_labels, image_boxes)
        )
    return results


def coco_metrics(coco_gt, results: list[dict], image_ids: list[int] | None = None) -> dict[str, float]:
    """The 12 COCO box metrics (fractions in [0, 1]; -1 where undefined) of ``results`` against ``coco_gt``,
    over ``image_ids`` (default: every image of ``coco_gt``)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(COCO_METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_METRICS, evaluator.stats)}


class DetectionEvaluation:
    """The engine's evaluation of a detector: COCO box AP (the metric of the best checkpoints: ``ap``),
    the other COCO numbers (in %, -1 where COCO leaves them undefined), and the mean of the set
    criterion's losses over the batches.

    With ``reduce`` (distributed evaluation), each process evaluates its shard, the detections of all
    processes are gathered, each image counted once (DistributedSampler repeats a few to even the
    shards), and every process computes the same metrics.

    Args:
        coco_gt: the pycocotools index of the validation annotations.
        criterion: the set criterion, for the validation losses (None: no losses).
    """

    metric = "ap"

    def __init__(self, coco_gt, criterion: nn.Module | None = None) -> None:
        self.coco_gt = coco_gt
        self.criterion = criterion

    @torch.no_grad()
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
    ) -> dict[str, float]:
        model.eval()
        found: dict[int, list[dict]] = {}
        sums: dict[str, float] = {}
        batches = 0
        for images, targets in progress(loader, len(loader), description, dist.is_main and show_progress):
            images, targets = to_device(images, dist.device), to_device(targets, dist.device)
            if prepare is not None:
                images, targets = prepare(images, targets)
            with precision.autocast():
                outputs = model(images)
            results, per_image = detections(outputs, targets), outputs["pred_logits"].shape[1]
            for i, target in enumerate(targets):  # an image seen again (a padded shard) counts once
                found.setdefault(int(target["image_id"]), results[i * per_image : (i + 1) * per_image])
            if self.criterion is not None:
                for name, value in self.criterion(outputs, targets).items():
                    sums[name] = sums.get(name, 0.0) + float(value)
            batches += 1
        if reduce and dist.enabled:
            merged: dict[int, list[dict]] = {}
            for part in gather_objects(found, dist):
                for image_id, results in part.items():
                    merged.setdefault(image_id, results)
            found = merged
            totals = gather_objects((sums, batches), dist)
            sums = {name: sum(s.get(name, 0.0) for s, _ in totals) for name in sums}
            batches = sum(b for _, b in totals)
        metrics = coco_metrics(self.coco_gt, [r for results in found.values() for r in results], list(found))
        metrics = {name: 100 * value if value >= 0 else value for name, value in metrics.items()}  # AP in %
        metrics.update({name: value / max(batches, 1) for name, value in sums.items()})
        return metrics
