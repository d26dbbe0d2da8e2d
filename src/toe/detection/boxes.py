"""Box formats of the detection pipeline.

COCO annotations give absolute ``[x, y, w, h]`` boxes; the data pipeline works in absolute
``[x0, y0, x1, y1]``; the model predicts normalised ``[cx, cy, w, h]`` (fractions of the image's
unpadded width and height). Conversions between these use :func:`torchvision.ops.box_convert`.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert


def coco_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """COCO ``[x, y, w, h]`` boxes [N, 4] -> ``[x0, y0, x1, y1]`` [N, 4]."""
    return box_convert(boxes, "xywh", "xyxy")


def xyxy_to_coco(boxes: torch.Tensor) -> torch.Tensor:
    """``[x0, y0, x1, y1]`` boxes [N, 4] -> COCO ``[x, y, w, h]`` [N, 4]."""
    return box_convert(boxes, "xyxy", "xywh")


def normalize_xyxy(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Absolute ``[x0, y0, x1, y1]`` boxes [N, 4] in an image of ``height`` x ``width`` -> normalised
    ``[cx, cy, w, h]`` [N, 4] (fractions of the image size, what the model predicts)."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return box_convert(boxes, "xyxy", "cxcywh") / scale


def denormalize_cxcywh(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Normalised ``[cx, cy, w, h]`` boxes [B, Q, 4] -> absolute ``[x0, y0, x1, y1]`` [B, Q, 4] in images
    of ``sizes`` [B, 2] (height, width)."""
    height, width = sizes.unbind(1)
    scale = torch.stack((width, height, width, height), dim=1).to(boxes.dtype)
    return box_convert(boxes, "cxcywh", "xyxy") * scale[:, None, :]
