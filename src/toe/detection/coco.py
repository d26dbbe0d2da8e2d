"""COCO-format detection data: the folder layout, the dataset, and padded batches.

Layout (that of COCO 2017; any folder laid out the same way works)::

    root/train2017/*.jpg   root/val2017/*.jpg
    root/annotations/instances_train2017.json   root/annotations/instances_val2017.json

A sample is ``(image [3, h, w], target)`` with the target of :mod:`toe.detection.transforms` plus
``image_id`` and ``orig_size`` (height, width of the file), which evaluation needs to map boxes back.
Crowd annotations and boxes without area are left out of the training targets, as in DETR.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from ..data.image_files import read_rgb
from ..errors import UserError
from .boxes import coco_to_xyxy

if TYPE_CHECKING:
    from PIL import Image

SPLITS = {"train": "train2017", "val": "val2017"}


def split_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of ``split`` ("train" or "val") under ``root``."""
    root = Path(root)
    return root / SPLITS[split], root / "annotations" / f"instances_{SPLITS[split]}.json"


def load_coco(annotation_file: Path, flag: str = "--coco_path"):
    """A pycocotools ``COCO`` index of ``annotation_file`` (quiet); a bad file is a :class:`UserError`."""
    from pycocotools.coco import COCO

    if not annotation_file.is_file():
        raise UserError(f"{flag}: {annotation_file} does not exist (expected the COCO layout, see datasets/README.md)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(annotation_file))
    except (ValueError, KeyError, TypeError, AssertionError, json.JSONDecodeError) as error:
        raise UserError(
            f"{flag}: {annotation_file} is not a COCO annotation file ({type(error).__name__}: {error})"
        ) from None
    for key in ("images", "annotations", "categories"):
        if key not in coco.dataset:
            raise UserError(f"{flag}: {annotation_file} has no '{key}' list (not a COCO instances file)")
    return coco


def check_annotations(dataset: dict, where: str) -> int:
    """Check a COCO instances file's lists once, when it is loaded: every image has an integer ``id`` and a
    ``file_name``, every category an integer ``id``, and every annotation names a listed image and category
    and has a ``bbox`` of 4 finite numbers, width and height >= 0. The first offence is a :class:`UserError`
    naming the annotation (its index and id); returns the number of boxes without area (width or height 0),
    which training leaves out, as DETR does."""

    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for index, image in enumerate(dataset["images"]):
        if not isinstance(image, dict) or not whole(image.get("id")) or not isinstance(image.get("file_name"), str):
            raise UserError(f"{where}: image {index} ({str(image)[:80]}) needs an integer 'id' and a 'file_name'")
    for index, category in enumerate(dataset["categories"]):
        if not isinstance(category, dict) or not whole(category.get("id")) or category["id"] < 0:
            raise UserError(f"{where}: category {index} ({str(category)[:80]}) needs an integer 'id' >= 0")
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    without_area = 0
    for index, annotation in enumerate(dataset["annotations"]):
        name = f"annotation {index} (id {annotation.get('id', '?') if isinstance(annotation, dict) else '?'})"
        if not isinstance(annotation, dict):
            raise UserError(f"{where}: {name} is not an object")
        if annotation.get("image_id") not in image_ids:
            raise UserError(f"{where}: {name} names image_id {annotation.get('image_id')!r}, not among the images")
        if annotation.get("category_id") not in category_ids:
            raise UserError(
                f"{where}: {name} has category_id {annotation.get('category_id')!r}, not among the categories "
                f"({', '.join(map(str, sorted(category_ids)[:10]))}{', ...' if len(category_ids) > 10 else ''})"
            )
        box = annotation.get("bbox")
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
            and all(math.isfinite(v) for v in box)
        ):
            raise UserError(f"{where}: {name} has bbox {box!r}; expected [x, y, width, height], 4 finite numbers")
        if box[2] < 0 or box[3] < 0:
            raise UserError(f"{where}: {name} has bbox {box!r} with a negative width or height")
        without_area += box[2] == 0 or box[3] == 0
    return without_area


def num_classes_of(coco) -> int:
    """K for the class head: the largest category id + 1 (91 for COCO, whose ids have gaps), as DETR."""
    ids = [category["id"] for category in coco.dataset["categories"]]
    if not ids:
        raise UserError("the annotation file lists no categories")
    return max(ids) + 1


class CocoDetection(Dataset):
    """Images of ``image_folder`` with their annotations from ``coco`` (every image, annotated or not).

    ``samples[i]`` is ``(path, image_id)`` (unreadable images are named by path).
    """

    def __init__(self, image_folder: Path, coco, transforms=None) -> None:
        self.coco = coco
        self.transforms = transforms
        self.ids = sorted(coco.imgs)
        self.samples = [(Path(image_folder) / coco.imgs[i]["file_name"], i) for i in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, dict]:  # a PIL image without transforms
        path, image_id = self.samples[index]
        image = read_rgb(path)  # the classification reader: 16-bit greyscale scaled, not clipped to white
        target = self.target(image_id, image.width, image.height)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def target(self, image_id: int, width: int, height: int) -> dict[str, torch.Tensor]:
        """The image's non-crowd boxes (absolute ``[x0, y0, x1, y1]``, clipped, with area) and labels."""
        annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = coco_to_xyxy(torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4))
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return {
            "boxes": boxes[keep],
            "labels": torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)[keep],
            "area": torch.tensor([float(a.get("area", 0.0)) for a in annotations], dtype=torch.float32)[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "image_id": torch.tensor(image_id),
            "orig_size": torch.tensor([height, width]),
            "size": torch.tensor([height, width]),
        }


def build_coco_split(root: str | Path, split: str, transforms, flag: str = "--coco_path") -> CocoDetection:
    """The ``split`` ("train" / "val") of the COCO-layout folder ``root``; a wrong layout is a :class:`UserError`."""
    if not Path(root).is_dir():
        raise UserError(f"{flag} {root} does not exist")
    image_folder, annotation_file = split_paths(root, split)
    if not image_folder.is_dir():
        raise UserError(f"{flag}: {image_folder} does not exist (expected the COCO layout, see datasets/README.md)")
    coco = load_coco(annotation_file, flag)
    dataset = CocoDetection(image_folder, coco, transforms)
    if len(dataset) == 0:
        raise UserError(f"{flag}: {annotation_file} lists no images")
    without_area = check_annotations(coco.dataset, f"{flag}: {annotation_file}")
    usable = [
        a for a in coco.dataset["annotations"] if not a.get("iscrowd", 0) and a["bbox"][2] > 0 and a["bbox"][3] > 0
    ]
    if not usable:
        use = "train on" if split == "train" else "evaluate against (COCO's AP would be -1)"
        raise UserError(
            f"{flag}: {annotation_file} has no usable box (none, or all crowd or without area): nothing to {use}"
        )
    if without_area and int(os.environ.get("RANK", "0")) == 0:
        print(f"{annotation_file}: {without_area} boxes without area (width or height 0) left out, as DETR does")
    return dataset


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Pad the images of a batch to the largest height and width (zeros at the bottom and right).

    Returns ``images`` [B, 3, H, W] and the targets, each with ``pad_mask`` [H, W] (True on padding).
    """
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], height, width)
    targets = []
    for i, (image, target) in enumerate(batch):
        images[i, :, : image.shape[1], : image.shape[2]] = image
        mask = torch.ones(height, width, dtype=torch.bool)
        mask[: image.shape[1], : image.shape[2]] = False
        targets.append({**target, "pad_mask": mask})
    return images, targets
