"""Unreadable images: name the file, or (``--skip-corrupt``) use the next readable image and count it.

An image that reads but fails in the transform is not corrupt: the error names the file, its size and
the transform's complaint, with or without ``--skip-corrupt``.

Errors raised in DataLoader worker processes reach the main process with the worker's traceback
prepended to the message; :class:`DataError` keeps only its own sentence, so the user sees
one line.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sized
from typing import cast

from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError

# PIL: UnidentifiedImageError, truncated files, decompression bombs (images of absurd pixel counts), ...
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(UserError):
    """A data file that cannot be used (an image, a label file): one sentence even when raised in a loader
    worker."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        text = str(message)
        super().__init__(text.rsplit(marker, 1)[-1].strip() if marker in text else text)


class CorruptImageError(DataError):
    """An image file that cannot be decoded."""


class GuardedDataset(Dataset):
    """Wrap an image dataset (ImageFolder-like: ``samples[i][0]`` is the path) to handle bad files."""

    def __init__(self, dataset: Dataset, skip_corrupt: bool = False) -> None:
        self.dataset = dataset
        self.skip_corrupt = skip_corrupt
        self._skipped = multiprocessing.Value("i", 0)  # shared with forked loader workers

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # a map-style dataset: torch's Dataset type leaves __len__ out

    @property
    def skipped(self) -> int:
        """Unreadable images replaced so far (all loader workers together)."""
        return self._skipped.value

    def __getitem__(self, index: int):
        for offset in range(len(self)):
            current = (index + offset) % len(self)
            try:
                return self.dataset[current]
            except READ_ERRORS as error:
                path = self._path(current)
                size = self._readable_size(current)
                if size is not None:  # the file reads: the transform failed, the image is not corrupt
                    raise DataError(
                        f"image {path} ({size[0]}x{size[1]} px) cannot be transformed ({type(error).__name__}: {error})"
                    ) from None
                if not self.skip_corrupt:
                    raise CorruptImageError(
                        f"cannot read image {path} ({type(error).__name__}: {error}); "
                        "replace or delete it, or pass --skip-corrupt"
                    ) from None
                with self._skipped.get_lock():
                    self._skipped.value += 1
                print(f"warning: skipped unreadable image {path} ({error})", file=sys.stderr)
        raise UserError("no image of the dataset could be read")

    def _readable_size(self, index: int) -> tuple[int, int] | None:
        """(width, height) of sample ``index`` when the dataset's loader reads it, else None."""
        samples, loader = getattr(self.dataset, "samples", None), getattr(self.dataset, "loader", None)
        if samples is None or loader is None:
            return None
        try:
            return loader(samples[index][0]).size
        except READ_ERRORS:
            return None

    def _path(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        return str(samples[index][0]) if samples is not None else f"sample {index}"
