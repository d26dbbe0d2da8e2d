"""Load ImageNet weights into a YOLOS backbone (``--pre_trained``) before the detector is built on it.

Accepted files: checkpoints of this project's recipes (``model`` entry), official DeiT checkpoints
(``model`` entry, and an ``argparse.Namespace`` under ``args``, which is allowed through
``torch.load(weights_only=True)`` and nothing else), and timm weight files (a bare state_dict in a
``.pth``/``.bin`` file, or ``.safetensors``). Like upstream YOLOS, the classifier heads and a
distillation token are ignored, and a distilled model's position embedding keeps the distillation
token's position for the class token (upstream drops the first of the two). The position embedding
may be of any square grid: the detector interpolates it to ``--init_pe_size``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

IGNORED_PREFIXES = ("head.", "head_dist.", "fc_norm.", "dist_token")


def read_state_dict(path: str | Path, flag: str = "--pre_trained") -> dict[str, torch.Tensor]:
    """The model weights a file holds (see the module docstring); anything else is a :class:`UserError`."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{flag} {file}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch, zip, pickle and safetensors each raise their own kinds
        raise UserError(f"{flag} {file} is not a readable weights file ({type(error).__name__})") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{flag} {file} does not hold model weights")
    return state


def load_backbone_weights(backbone: nn.Module, path: str | Path, flag: str = "--pre_trained") -> str:
    """Load the weights of ``path`` into a timm ViT ``backbone``; returns a one-line report.

    Tensors of another shape than the backbone's (other than the position embedding's grid) are a
    :class:`UserError` naming the first few, as is a file that shares no tensor with the backbone.
    """
    state = {k.removeprefix("module."): v for k, v in read_state_dict(path, flag).items()}
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
    grid = backbone.pos_embed.shape[1] - 1
    return (
        f"backbone weights from {path}: {len(loaded)} tensors loaded ({grid} patch positions), "
        f"{len(missing)} left at init, {len(ignored)} head/distillation tensors and {len(unknown)} unknown ignored"
    )


def _fits(key: str, tensor: torch.Tensor, own: torch.Tensor) -> bool:
    """Same shape, except that a position embedding may be of another grid (length)."""
    if key == "pos_embed":
        return tensor.dim() == 3 and tensor.shape[-1] == own.shape[-1]
    return tensor.shape == own.shape
