"""Image files of a class-folder data set: which files count, how they are read, and a cheap fingerprint.

- :class:`ClassFolders`: torchvision's ImageFolder with safer listing: hidden folders and files
  (``.ipynb_checkpoints``, ``.DS_Store``, ``._x.jpg``) are not classes or images (a warning names each
  hidden folder), symbolic links are followed but a folder is never entered twice (a symlink loop
  would otherwise repeat the data), and the order is torchvision's (the same runs as before);
- :func:`read_rgb`: PIL's RGB conversion, except that 16-bit greyscale images (PNG, TIFF) are scaled
  to 8 bits instead of being clipped (PIL's ``convert`` saturates everything above 255);
- :func:`data_fingerprint`: a short hash of the class list, the file names and a few files' first
  bytes, to tell whether two processes (or a label folder and a data folder) see the same images.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import datasets as tv_datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
FINGERPRINT_FILES = 16  # files whose first bytes enter the fingerprint
FINGERPRINT_BYTES = 1 << 16


def read_rgb(path: str | Path) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image (16-bit greyscale scaled by 255/65535)."""
    with open(path, "rb") as handle:
        image: Image.Image = Image.open(handle)
        if image.mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(image, dtype=np.float64)
            image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
        return image.convert("RGB")


def _warn(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {message}", file=sys.stderr)


def _hidden(name: str) -> bool:
    return name.startswith(".")


class ClassFolders(tv_datasets.ImageFolder):
    """``ImageFolder(root, transform)`` read with :func:`read_rgb`, listing as the module docstring says."""

    def __init__(self, root: str | Path, transform=None) -> None:
        super().__init__(str(root), transform=transform, loader=read_rgb)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        names = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
        for name in names:
            if _hidden(name):
                _warn(f"ignoring hidden folder {os.path.join(directory, name)} (not a class)")
        classes = [name for name in names if not _hidden(name)]
        return classes, {name: index for index, name in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        extensions = extensions or IMG_EXTENSIONS
        samples = []
        for name in sorted(class_to_idx):
            for folder, files in _walk_once(os.path.join(directory, name)):
                samples += [
                    (os.path.join(folder, f), class_to_idx[name])
                    for f in files
                    if not _hidden(f) and has_file_allowed_extension(f, extensions)
                ]
        return samples


def _walk_once(top: str) -> list[tuple[str, list[str]]]:
    """(folder, sorted file names) of ``top`` and its sub-folders, in torchvision's order (sorted by
    path), following symbolic links but never into a folder already listed or one that holds it (a
    symbolic link loop); hidden sub-folders are skipped."""
    seen: dict[str, str] = {}  # real path -> the path it was listed under
    found = []
    stack = [top]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        again = next((seen[r] for r in seen if r == real or r.startswith(real.rstrip(os.sep) + os.sep)), None)
        if again is not None:
            _warn(f"not following {folder}: it leads back to {again} (a symbolic link loop or a second link)")
            continue
        seen[real] = folder
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            _warn(f"cannot list {folder} ({error.strerror}); its images are left out")
            continue
        files = []
        for entry in entries:
            try:
                is_folder = entry.is_dir()
            except OSError:
                continue
            if not is_folder:
                files.append(entry.name)
            elif _hidden(entry.name):
                _warn(f"ignoring hidden folder {entry.path}")
            else:
                stack.append(entry.path)
        found.append((folder, sorted(files)))
    return sorted(found)


def data_fingerprint(classes: list[str], samples: list[tuple[str, int]], root: str | Path) -> str:
    """A short hash of the class list, every image's path below ``root`` and class, and the first
    64 KiB of 16 images spread over the data set: equal for the same data, cheap for ImageNet."""
    digest = hashlib.sha256()
    digest.update("\n".join(classes).encode())
    prefix = str(root)
    for path, label in samples:
        relative = path[len(prefix) :] if path.startswith(prefix) else path
        digest.update(f"\n{relative}\t{label}".encode())
    count = min(FINGERPRINT_FILES, len(samples))
    for i in range(count):
        path = samples[i * len(samples) // count][0]
        try:
            with open(path, "rb") as handle:
                digest.update(handle.read(FINGERPRINT_BYTES))
        except OSError as error:
            digest.update(f"unreadable: {error.strerror}".encode())
    return digest.hexdigest()[:16]


def dataset_identity(dataset) -> dict:
    """What a training set is, to compare across processes and resumes: its image and class counts and, for
    class folders (``samples``, ``classes``, ``root``), :func:`data_fingerprint` (paths taken below the root,
    so that the same images mounted elsewhere agree)."""
    classes = list(getattr(dataset, "classes", []))
    identity: dict[str, int | str] = {"images": len(dataset), "classes": len(classes)}
    samples, root = getattr(dataset, "samples", None), getattr(dataset, "root", None)
    if samples is not None and root is not None:
        identity["fingerprint"] = data_fingerprint(classes, samples, root)
    return identity
