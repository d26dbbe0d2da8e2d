"""Carry a checkpoint across an input-resolution change: resample the position embedding and its optimizer state.

EfficientTrain builds each stage's ViT at the stage's input size, so its absolute position embedding
[1, prefix + g*g, C] changes grid between stages (10x10 -> 12x12 -> 14x14 for DeiT at 160/192/224 px).
Before a stage loads the previous stage's checkpoint, the embedding of the model and of its EMA is
resampled to the new grid as EfficientTrain does (``update_ckpt``: bilinear, ``align_corners=False``, no
antialiasing, prefix tokens kept as they are; timm's ``resample_abs_pos_embed``), and so is every optimizer
state tensor of that parameter (AdamW's ``exp_avg`` and ``exp_avg_sq``; bilinear weights are non-negative,
so the second moments stay non-negative). Models without an absolute position embedding (CNNs) need nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..errors import UserError

if TYPE_CHECKING:
    from ..integration import PatchEmbedding


def resample_checkpoint(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer, source: str) -> str | None:
    """Resample ``state``'s position embeddings (model, EMA, optimizer state) to ``model``'s grid, in place.

    Args:
        state: a checkpoint (see ``toe.engine.checkpoint_state``) of the same architecture at another size.
        model: the plain model of the new stage (``model.pos_embed`` [1, prefix + g*g, C]).
        optimizer: the new stage's optimizer, built like the checkpoint's (same parameter order).
        source: names the checkpoint in errors.

    Returns:
        a one-line description of what was resampled, or None when the grids already match.
    """
    pos_embed = getattr(model, "pos_embed", None)
    saved = state["model"].get("pos_embed")
    if not isinstance(pos_embed, nn.Parameter) or saved is None or saved.shape == pos_embed.shape:
        return None
    if saved.shape[0] != 1 or saved.shape[-1] != pos_embed.shape[-1]:
        raise UserError(f"{source} has a position embedding of shape {tuple(saved.shape)}, not one of this model")
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = list(cast("PatchEmbedding", model.patch_embed).grid_size)

    def resample(tensor: torch.Tensor) -> torch.Tensor:
        return resample_abs_pos_embed(
            tensor, new_size=grid, num_prefix_tokens=prefix, interpolation="bilinear", antialias=False
        )

    state["model"]["pos_embed"] = resample(saved)
    if "pos_embed" in (state.get("model_ema") or {}):
        state["model_ema"]["pos_embed"] = resample(state["model_ema"]["pos_embed"])
    moments = []
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    index = next((i for i, p in enumerate(parameters) if p is pos_embed), None)
    entry = (state.get("optimizer") or {}).get("state", {}).get(index)
    for name, value in (entry or {}).items():
        if isinstance(value, torch.Tensor) and value.shape == saved.shape:
            entry[name] = resample(value)
            moments.append(name)
    old = "x".join(str(round((saved.shape[1] - prefix) ** 0.5)) for _ in range(2))
    new = "x".join(map(str, grid))
    return f"position embedding resampled from {old} to {new}" + (
        f" (with the optimizer's {', '.join(moments)})" if moments else ""
    )
