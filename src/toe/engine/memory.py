"""Training memory, measured the same way a run and ``toe bench --memory`` report it.

On CUDA: the peak of ``torch.cuda.max_memory_allocated`` (weights, gradients, optimizer state and
activations). On the CPU, where no allocator keeps a peak: the bytes of the tensors autograd saves for
backward during one forward (activations; the model's own parameters and buffers are not counted), taken
with torch's saved-tensor hooks, each storage once. Both are what ToE shrinks: every block after block 0
keeps activations for the reduced tokens only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward inside :meth:`measure` (storages counted once, the
    module's parameters and buffers excluded): ``meter.bytes`` after the context."""

    def __init__(self, module: nn.Module | None = None) -> None:
        resident = [] if module is None else [*module.parameters(), *module.buffers()]
        self._resident = {t.untyped_storage().data_ptr() for t in resident}
        self._seen: set[int] = set()
        self.bytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._resident and key not in self._seen:
            self._seen.add(key)
            self.bytes += storage.nbytes()
        return tensor

    @contextlib.contextmanager
    def measure(self) -> Iterator[SavedTensorMeter]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak (no-op on other devices)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak(device: torch.device) -> int:
    """Bytes of the CUDA peak since :func:`reset_peak`."""
    return torch.cuda.max_memory_allocated(device)


def mebibytes(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else num_bytes / 2**20
