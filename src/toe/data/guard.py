"""Unreadable images: name the file, or (``--skip-corrupt``) use the next readable image and count it.

Errors raised in DataLoader worker processes reach the main process with the worker's traceback
prepended to the message; :class:`CorruptImageError` keeps only its own sentence, so the user sees
one line.
"""

from __future__ import annotations

import multiprocessing
import sys

from torch.utils.data import Dataset

from ..errors import UserError

_READ_ERRORS = (OSError, ValueError, SyntaxError)  # PIL: UnidentifiedImageError, truncated files, ...


class CorruptImageError(UserError):
    """An image file that cannot be decoded."""

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        text = str(message)
        super().__init__(text.rsplit(marker, 1)[-1].strip() if marker in text else text)


class GuardedDataset(Dataset):
    """Wrap an image dataset (ImageFolder-like: ``samples[i][0]`` is the path) to handle bad files."""

    def __init__(self, dataset: Dataset, skip_corrupt: bool = False) -> None:
        self.dataset = dataset
        self.skip_corrupt = skip_corrupt
        self._skipped = multiprocessing.Value("i", 0)  # shared with forked loader workers

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def skipped(self) -> int:
        """Unreadable images replaced so far (all loader workers together)."""
        return self._skipped.value

    def __getitem__(self, index: int):
        for offset in range(len(self.dataset)):
            current = (index + offset) % len(self.dataset)
            try:
                return self.dataset[current]
            except _READ_ERRORS as error:
                path = self._path(current)
                if not self.skip_corrupt:
                    raise CorruptImageError(
                        f"cannot read image {path} ({type(error).__name__}: {error}); "
                        "replace or delete it, or pass --skip-corrupt"
                    ) from None
                with self._skipped.get_lock():
                    self._skipped.value += 1
                print(f"warning: skipped unreadable image {path} ({error})", file=sys.stderr)
        raise UserError("no image of the dataset could be read")

    def _path(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        return str(samples[index][0]) if samples is not None else f"sample {index}"
