"""Datasets of the recipes: any ImageNet-layout folder, CIFAR-10/100; class count inferred.

Every problem a user can cause (missing folder, no class folders, an empty class, train and val classes
that differ, CIFAR not downloaded) raises :class:`~toe.options.UserError` naming the path.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

from ..errors import UserError
from .image_files import ClassFolders

DATA_SETS = ("IMNET", "CIFAR10", "CIFAR100", "INAT", "INAT19")


def build_dataset(
    data_set: str, data_path: str | Path, is_train: bool, transform: Callable | None, download: bool = False
) -> tuple[Dataset, int]:
    """The train or val split of ``data_set`` and its number of classes."""
    root = Path(data_path)
    if data_set == "IMNET":
        return image_folder(root / ("train" if is_train else "val"), transform)
    if data_set in ("CIFAR10", "CIFAR100"):
        cls = tv_datasets.CIFAR10 if data_set == "CIFAR10" else tv_datasets.CIFAR100
        try:
            dataset = cls(str(root), train=is_train, transform=transform, download=download)
        except RuntimeError as error:
            raise UserError(f"--data-path {root}: {data_set} not found there ({error}); add --download") from None
        return dataset, len(dataset.classes)
    if data_set in ("INAT", "INAT19"):
        raise UserError(
            f"--data-set {data_set} is not supported; arrange iNaturalist in ImageNet layout "
            "(train/<class>/..., val/<class>/...) and use --data-set IMNET"
        )
    raise UserError(f"--data-set must be one of {', '.join(DATA_SETS)}, got {data_set}")


def image_folder(
    folder: Path, transform: Callable | None, announce: bool = True, allow_empty_classes: bool = False
) -> tuple[ClassFolders, int]:
    """An ImageFolder (see :class:`~toe.data.image_files.ClassFolders`) with checks that name the offending
    path; ``announce`` prints its class and image counts (main process). ``allow_empty_classes``: a class
    folder without images is counted, not refused (small splits of many classes, e.g. VTAB's val200 of
    SUN397's 397 classes)."""
    if not folder.is_dir():
        raise UserError(f"data folder {folder} does not exist (expected train/ and val/ with one folder per class)")
    try:
        dataset = ClassFolders(folder, transform=transform)
    except OSError as error:
        raise UserError(f"data folder {folder} cannot be read ({error.strerror or error})") from None
    classes = dataset.classes
    if not classes:
        raise UserError(f"data folder {folder} has no class folders (expected {folder}/<class>/<image>)")
    counts = Counter(label for _, label in dataset.samples)
    empty = [name for index, name in enumerate(classes) if not counts[index]]
    if empty and not allow_empty_classes:
        raise UserError(f"class folder {folder / empty[0]} holds no images")
    if not dataset.samples:
        raise UserError(f"data folder {folder} holds no images")
    if announce and int(os.environ.get("RANK", "0")) == 0:
        without = f" ({len(empty)} without images)" if empty else ""
        print(f"data: {folder}: {len(classes)} classes{without}, {len(dataset.samples)} images")
    return dataset, len(classes)


def check_same_classes(train: Dataset, val: Dataset, train_path: str, val_path: str) -> None:
    """Train and val must use the same class list (same folders), else labels would not match."""
    train_classes, val_classes = getattr(train, "classes", None), getattr(val, "classes", None)
    if train_classes is not None and val_classes is not None and list(train_classes) != list(val_classes):
        missing = sorted(set(train_classes) ^ set(val_classes))[:3]
        raise UserError(
            f"{train_path} and {val_path} have different class folders (e.g. {', '.join(missing)}); "
            "both need the same classes"
        )
