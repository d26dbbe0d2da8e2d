"""A picture of a detector's predictions: boxes above a score on a few validation images, next to the truth."""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from ..data.image_files import read_rgb
from .coco import CocoDetection, collate_detection
from .evaluation import detections


@torch.no_grad()
def predictions_figure(model: nn.Module, dataset: CocoDetection, count: int = 6, threshold: float = 0.5) -> Figure:
    """The first ``count`` images of ``dataset`` with their true boxes (dashed white) and the ``model``'s
    detections scoring at least ``threshold`` (solid, labelled with category and score), one panel each."""
    model.eval()
    device = next(model.parameters()).device
    count = min(count, len(dataset))
    samples = cast(list[tuple[torch.Tensor, dict]], [dataset[i] for i in range(count)])  # a set with transforms
    images, targets = collate_detection(samples)
    found = detections(model(images.to(device)), targets)
    names = {c["id"]: c["name"] for c in dataset.coco.dataset["categories"]}
    columns = min(count, 3)
    rows = -(-count // columns)
    figure = Figure(figsize=(3 * columns, 3 * rows))
    for index in range(count):
        path, image_id = dataset.samples[index]
        axis = figure.add_subplot(rows, columns, index + 1)
        axis.imshow(np.asarray(read_rgb(path)))
        for annotation in dataset.coco.imgToAnns.get(image_id, []):
            x, y, w, h = annotation["bbox"]
            axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="white", linestyle="--", linewidth=1))
        shown = [d for d in found if d["image_id"] == image_id and d["score"] >= threshold]
        for detection in shown:
            x, y, w, h = detection["bbox"]
            axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="#ff3b30", linewidth=1.5))
            label = f"{names.get(detection['category_id'], detection['category_id'])} {detection['score']:.2f}"
            axis.text(x, y - 1, label, color="#ff3b30", fontsize=7, va="bottom")
        axis.set_title(f"image {image_id}: {len(shown)} found", fontsize=8)
        axis.set_axis_off()
    figure.suptitle(f"predictions with score >= {threshold} (red) and the true boxes (dashed)", fontsize=9)
    figure.tight_layout()
    return figure
