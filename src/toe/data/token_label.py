"""Token labeling data: label files, the dataset that pairs every training image with its label map, and
the training targets made from them on the device.

A label file holds the annotator's top-5 class scores and indices per location of the whole image, a
[2, 5, h, w] float16 tensor (``[0]`` scores, ``[1]`` class indices), saved with ``torch.save`` at the image's
path relative to the train folder with the suffix ``.pt`` (``train/n01440764/x.JPEG`` ->
``LABELS/n01440764/x.pt``). ``ToE/lvvit/generate_label.py`` makes them.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.ops import roi_align

from ..errors import UserError
from .datasets import image_folder
from .guard import DataError
from .label_record import RECORD_NAME, check_same_data, data_identity, read_record
from .label_transforms import TokenLabelTransform

TOPK = 5
LABEL_SUFFIX = ".pt"


def label_file(label_root: Path, image_root: Path, image: str | Path) -> Path:
    """Where the label file of ``image`` (a file under ``image_root``) lives."""
    return Path(label_root) / Path(image).relative_to(image_root).with_suffix(LABEL_SUFFIX)


def check_label_map(label_map: object, source: str | Path, num_classes: int) -> torch.Tensor:
    """``label_map`` if it is a [2, 5, h, w] tensor of scores and class indices below ``num_classes``."""
    if not isinstance(label_map, torch.Tensor) or label_map.dim() != 4 or tuple(label_map.shape[:2]) != (2, TOPK):
        shape = list(label_map.shape) if isinstance(label_map, torch.Tensor) else type(label_map).__name__
        raise DataError(
            f"token label file {source} holds {shape}, expected a [2, {TOPK}, H, W] tensor "
            "(top-5 scores and class indices per location)"
        )
    if not torch.isfinite(label_map.float()).all():
        raise DataError(f"token label file {source} holds NaN or infinite values; make it again (generate_label.py)")
    indices = label_map[1].float()
    if not torch.equal(indices, indices.round()) or indices.min() < 0 or indices.max() >= num_classes:
        raise DataError(
            f"token label file {source} has class indices outside 0..{num_classes - 1} (made for another class list?)"
        )
    return label_map


def read_label_file(path: Path, num_classes: int) -> torch.Tensor:
    """Load and check one label file: [2, 5, h, w]."""
    try:
        label_map = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"token label file {path} is missing (make it with ToE/lvvit/generate_label.py)") from None
    except Exception as error:
        raise DataError(f"token label file {path} is not readable ({type(error).__name__})") from None
    return check_label_map(label_map, path, num_classes)


class TokenLabelDataset(Dataset):
    """The images of an ImageNet-layout ``folder`` with their label maps.

    Item ``i`` is ``(image [3, S, S], {"label": class index, "label_map": [2, 5, h, w], "box": [4]})``, where
    ``box`` is the part of the label map the image shows (x0, y0, x1, y1 in [0, 1]). Every label file must
    exist, the label folder's record (if any) must name these images, and every map must have the first
    one's grid ``label_grid`` (h, w), else :class:`UserError` names the problem.
    """

    def __init__(self, folder: str | Path, label_root: str | Path, transform: TokenLabelTransform) -> None:
        folder, label_root = Path(folder), Path(label_root)
        if not label_root.is_dir():
            raise UserError(
                f"--token-label-data {label_root} does not exist (make it with ToE/lvvit/generate_label.py)"
            )
        images, self.num_classes = image_folder(folder, None)
        self.classes, self.samples, self.loader, self.root = images.classes, images.samples, images.loader, images.root
        self.label_files = [label_file(label_root, folder, path) for path, _ in self.samples]
        self.transform = transform
        _check_files_exist(self.label_files, label_root)
        _check_record(label_root, self)
        self.label_grid = tuple(read_label_file(self.label_files[0], self.num_classes).shape[-2:])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        path, label = self.samples[index]
        label_map = read_label_file(self.label_files[index], self.num_classes)
        if tuple(label_map.shape[-2:]) != self.label_grid:
            h, w = self.label_grid
            raise DataError(
                f"token label file {self.label_files[index]} holds a {label_map.shape[-2]}x{label_map.shape[-1]} "
                f"map, the others {h}x{w} (e.g. {self.label_files[0]}); make it again with the same annotator"
            )
        image, label_map, box = self.transform(self.loader(path), label_map)
        return image, {"label": label, "label_map": label_map, "box": box}


def _check_record(label_root: Path, dataset: TokenLabelDataset) -> None:
    """The labels must have been made for these images (when the label folder records which)."""
    record = read_record(label_root)
    if record is None:
        print(
            f"warning: --token-label-data {label_root} has no {RECORD_NAME} (made by another tool or an older "
            "version): cannot check that its labels were made for these images",
            file=sys.stderr,
        )
        return
    check_same_data(record["data"], data_identity(dataset), f"--token-label-data {label_root}")


def _check_files_exist(files: list[Path], label_root: Path) -> None:
    """One directory listing per folder (fast on ImageNet's 1.28M files)."""
    by_folder: dict[Path, list[Path]] = defaultdict(list)
    for file in files:
        by_folder[file.parent].append(file)
    missing = []
    for folder, expected in by_folder.items():
        present = set(os.listdir(folder)) if folder.is_dir() else set()
        missing += [file for file in expected if file.name not in present]
    if missing:
        raise UserError(
            f"--token-label-data {label_root}: no label file for {len(missing)} of {len(files)} training images, "
            f"e.g. {missing[0]} (make them with ToE/lvvit/generate_label.py)"
        )


def dense_label_maps(label_maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-5 maps [B, 2, 5, h, w] -> dense score maps [B, K, h, w] (float32, 0 for classes outside the top 5)."""
    scores, indices = label_maps[:, 0].float(), label_maps[:, 1].long()
    batch, _, h, w = scores.shape
    return scores.new_zeros(batch, num_classes, h, w).scatter_(1, indices, scores)


ROI_ORDERS = ("xy", "upstream")


class TokenLabelTargets:
    """``StepHooks.prepare``: token-label batches -> soft targets, on the device, as TokenLabeling makes them.

    The dense score map of every sample is roi-aligned over its crop box to ``size`` x ``size`` (the
    token grid) and 1 x 1 (the class target), then softmax over classes and TokenLabeling's label smoothing
    ``p * (1 - s + s/K) + s/K``. ``roi_order`` "xy" reads the crop's own region of the map; "upstream" passes
    the box to roi_align as TokenLabeling does, (top, left, bottom, right) read as (x1, y1, x2, y2), which
    reads the transposed region for crops off the diagonal (for exact reproduction). With ``ground_truth``
    and dense targets the class target is blended with the smoothed one-hot label:
    ``cls * r + one_hot * (1 - r)``, r = 0.9 where the class target's top class is not the label, 0.5
    where it is (TokenLabeling's rule). Returns ``(images, {"cls": [B, K], "dense": [B, size*size, K]})``;
    ``size == 1`` gives the class target only (and ignores ``ground_truth``, as upstream).
    """

    def __init__(
        self, num_classes: int, size: int, smoothing: float = 0.1, ground_truth: bool = False, roi_order: str = "xy"
    ) -> None:
        if roi_order not in ROI_ORDERS:
            raise ValueError(f"roi_order must be one of {ROI_ORDERS}, got {roi_order!r}")
        self.num_classes, self.size, self.smoothing = num_classes, size, smoothing
        self.ground_truth, self.roi_order = ground_truth, roi_order

    def __call__(self, images: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
        maps = dense_label_maps(targets["label_map"], self.num_classes)
        box = targets["box"].float()
        if self.roi_order == "upstream":
            box = box[:, [1, 0, 3, 2]]
        h, w = maps.shape[-2:]
        box = box * torch.tensor([w, h, w, h], device=maps.device, dtype=torch.float32) - 0.5
        rois = torch.cat((torch.arange(len(box), device=maps.device, dtype=torch.float32).unsqueeze(1), box), dim=1)
        cls = self._smooth(roi_align(maps, rois, 1).flatten(1).softmax(dim=1))
        if self.size == 1:
            return images, {"cls": cls}
        if self.ground_truth:
            off = self.smoothing / self.num_classes  # a smoothed one-hot: 1 - s + s/K for the label, s/K elsewhere
            label = F.one_hot(targets["label"], self.num_classes).float() * (1 - self.smoothing) + off
            ratio = 0.9 - 0.4 * (label.argmax(1) == cls.argmax(1)).float().unsqueeze(1)
            cls = cls * ratio + label * (1 - ratio)
        dense = roi_align(maps, rois, self.size).softmax(dim=1)
        return images, {"cls": cls, "dense": self._smooth(dense.flatten(2).transpose(1, 2))}

    def _smooth(self, probabilities: torch.Tensor) -> torch.Tensor:
        off = self.smoothing / self.num_classes
        return probabilities * (1 - self.smoothing + off) + off
