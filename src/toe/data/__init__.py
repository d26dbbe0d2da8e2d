"""Data: datasets (ImageNet layout, CIFAR), DeiT transforms, reproducible samplers and loaders."""

from .datasets import DATA_SETS, build_dataset, check_same_classes, image_folder
from .loader import build_eval_loader, build_train_loader
from .sampling import EpochRandomSampler, KeyedSampler, SeededDataset
from .transforms import build_eval_transform, build_train_transform

__all__ = [
    "DATA_SETS",
    "EpochRandomSampler",
    "KeyedSampler",
    "SeededDataset",
    "build_dataset",
    "build_eval_loader",
    "build_eval_transform",
    "build_train_loader",
    "build_train_transform",
    "check_same_classes",
    "image_folder",
]
