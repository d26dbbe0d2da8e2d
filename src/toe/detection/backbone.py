"""Load ImageNet weights into a YOLOS backbone (``--pre_trained``) before the detector is built on it.

Accepted files: what :func:`toe.engine.checkpoint.load_weights` reads (checkpoints of this project's
recipes, official DeiT checkpoints with their ``argparse.Namespace`` flags, bare state_dicts such as
timm's ``.pth``/``.bin``/``.safetensors`` weight files). Like upstream YOLOS, the classifier heads and a
distillation token are ignored, and a distilled model's position embedding keeps the distillation
token's position for the class token (upstream drops the first of the two). The position embedding
may be of any square grid: the detector interpolates it to ``--init_pe_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..engine.checkpoint import load_weights
from ..errors import UserError

IGNORED_PREFIXES = ("head.", "head_dist.", "fc_norm.", "dist_token")


def load_backbone_weights(backbone: nn.Module, path: str | Path, flag: str = "--pre_trained") -> str:
    """Load the weights of ``path`` into a timm ViT ``backbone``; returns a one-line report.

    Tensors of another shape than the backbone's (other than the position embedding's grid) are a
    :class:`UserError` naming the first few, as is a file that shares no tensor with the backbone.
    """
    state = load_weights(path, flag)
    distilled = "dist_token" in state
    ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES))
    state = {k: v for k, v in state.items() if k not in ignored}
    own = backbone.state_dict()
    if "pos_embed" in state and distilled:  # upstream keeps the distillation token's position
        state["pos_embed"] = state["pos_embed"][:, 1:]
    mismatched = [
        f"{k} {tuple(v.shape)} (backbone {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and not _fits(k, v, own[k])
    ]
    if mismatched:
        raise UserError(
            f"{flag} {path} does not fit --backbone_name (with --model-kwargs): {'; '.join(mismatched[:3])}"
        )
    unknown = sorted(k for k in state if k not in own)
    loaded = [k for k in state if k in own]
    if not loaded:
        raise UserError(f"{flag} {path} holds no weight of the backbone (e.g. {unknown[0]}): not a DeiT/ViT file")
    if "pos_embed" in state:
        backbone.pos_embed = nn.Parameter(state.pop("pos_embed").to(own["pos_embed"].dtype))
    missing, _ = backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    grid = cast(nn.Parameter, backbone.pos_embed).shape[1] - 1
    return (
        f"backbone weights from {path}: {len(loaded)} tensors loaded ({grid} patch positions), "
        f"{len(missing)} left at init, {len(ignored)} head/distillation tensors and {len(unknown)} unknown ignored"
    )


def _fits(key: str, tensor: torch.Tensor, own: torch.Tensor) -> bool:
    """Same shape, except that a position embedding may be of another grid (length)."""
    if key == "pos_embed":
        return tensor.dim() == 3 and tensor.shape[-1] == own.shape[-1]
    return tensor.shape == own.shape
