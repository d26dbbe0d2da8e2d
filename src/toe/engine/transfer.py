"""Moving batches to the device and finding the plain model under its wrappers."""

from __future__ import annotations

import torch
from torch import nn


def to_device(batch, device: torch.device):
    """Move a tensor, or tuples/lists/dicts of tensors (e.g. token-label targets), to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    while True:
        inner = model._orig_mod if hasattr(model, "_orig_mod") else getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
