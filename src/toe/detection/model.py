"""YOLOS: a DeiT from timm that detects objects with [DET] tokens, with Token Expansion after block 0.

The backbone is timm's VisionTransformer (its patch embedding, class token, blocks and final norm);
YOLOS adds ``det_token_num`` learnable [DET] tokens after the patch tokens, a position embedding for
``[cls, patches, det]`` stored at the ``init_pe_size`` grid and interpolated (bicubic, as upstream) to
each batch's grid, optional per-block mid position embeddings (``mid_pe_size``) added after every block
but the last, and two 3-layer MLP heads on the final [DET] tokens: class logits (``num_classes`` + 1,
the last one "no object") and boxes (normalised ``[cx, cy, w, h]``, sigmoid).

Token Expansion, as the reference implementation places it: after block 0 (and block 0's mid position
embedding), on the class + patch tokens only; the [DET] tokens bypass selection and merging and are
concatenated back after the kept tokens; later mid position embeddings are gathered with the selection
index. The parameter names are those of upstream YOLOS (``backbone.det_token``, ``backbone.pos_embed``,
``backbone.mid_pos_embed``, ``class_embed.layers.N``, ...), so its checkpoints load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from ..token_select import TokenSelect

# --backbone_name -> timm model and the keyword arguments that make it upstream's backbone
BACKBONES: dict[str, tuple[str, dict]] = {
    "tiny": ("deit_tiny_patch16_224", {}),
    "small": ("deit_small_patch16_224", {}),
    "base": ("deit_base_patch16_384", {}),
    "small_dWr": ("deit_small_patch16_224", {"img_size": 240, "embed_dim": 330, "depth": 14, "num_heads": 6}),
}

POS_EMBED_INITS = ("pretrained", "sincos")  # --pos_embed_init


def create_backbone(name: str, **kwargs) -> VisionTransformer:
    """The timm DeiT for ``--backbone_name name`` (``kwargs`` override its shape, e.g. ``depth=3``), without
    classifier head and accepting any input size that is a whole number of patches."""
    import timm

    if name not in BACKBONES:
        raise ValueError(f"backbone_name must be one of {', '.join(BACKBONES)}, got {name!r}")
    model_name, defaults = BACKBONES[name]
    model = timm.create_model(
        model_name, pretrained=False, num_classes=0, dynamic_img_size=True, **{**defaults, **kwargs}
    )
    return cast(VisionTransformer, model)  # a DeiT


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class YOLOS(nn.Module):
    """YOLOS detector on a timm ViT ``backbone`` (its ``pos_embed`` holds the pre-training grid).

    Args:
        backbone: from :func:`create_backbone`, pre-trained weights already loaded.
        num_classes: K, the largest category id + 1 (COCO: 91).
        det_token_num: number of [DET] tokens (predictions per image).
        init_pe_size: (H, W) in pixels of the grid the position embedding is stored at.
        mid_pe_size: (H, W) of the mid position embeddings' grid, or None for none.
        use_checkpoint: recompute the blocks in the backward pass (less memory, more time).
        pos_embed_init: ``"pretrained"`` (upstream: the backbone's patch position embedding, interpolated
            to ``init_pe_size``) or ``"sincos"`` (a fixed 2-D sine-cosine embedding of that grid as the
            start, still trained: for a backbone whose position embedding carries no layout, such as a
            small model pre-trained briefly on classification, which needs no positions).

    ToE: assign a :class:`TokenSelect` to ``token_select`` (None: off); the model calls it itself
    (``apply_toe`` is for plain ViTs), and the engine sets its stage. Since batches differ in size,
    :meth:`last_token_counts` reports the sequence lengths of the last training forward (the engine averages
    them over an epoch).
    """

    selects_tokens_itself = True
    num_prefix_tokens = 1  # the class token (ToE keeps it, as in every ViT)

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        det_token_num: int = 100,
        init_pe_size: Sequence[int] = (800, 1344),
        mid_pe_size: Sequence[int] | None = None,
        use_checkpoint: bool = False,
        pos_embed_init: str = "pretrained",
    ) -> None:
        super().__init__()
        if pos_embed_init not in POS_EMBED_INITS:
            raise ValueError(f"pos_embed_init must be one of {', '.join(POS_EMBED_INITS)}, got {pos_embed_init!r}")
        if backbone.num_prefix_tokens != 1 or not backbone.has_class_token:
            raise ValueError("YOLOS needs a backbone with exactly one class token (no distillation or register tokens)")
        self.backbone = backbone
        self.det_token_num = det_token_num
        self.patch_size = tuple(backbone.patch_embed.patch_size)
        self.use_checkpoint = use_checkpoint
        self.token_select: TokenSelect | None = None
        self._last_tokens: tuple[int, int] | None = None  # the last training forward's (fed, full) lengths
        dim = backbone.embed_dim

        pretrain = cast(nn.Parameter, backbone.pos_embed).detach()  # a DeiT's: never None
        self.init_grid = self.grid_of(init_pe_size)
        if pos_embed_init == "sincos":
            patches = build_sincos2d_pos_embed(list(self.init_grid), dim).to(pretrain.dtype).unsqueeze(0)
        else:
            patches = resample_abs_pos_embed(
                pretrain[:, 1:], list(self.init_grid), _square_grid(pretrain.shape[1] - 1), 0, antialias=False
            )
        det_pos = trunc_normal_(torch.zeros(1, det_token_num, dim), std=0.02)
        backbone.pos_embed = nn.Parameter(torch.cat((pretrain[:, :1], patches, det_pos), dim=1))
        backbone.det_token = nn.Parameter(trunc_normal_(torch.zeros(1, det_token_num, dim), std=0.02))
        self.mid_grid = self.grid_of(mid_pe_size) if mid_pe_size else None
        if self.mid_grid is not None:
            length = 1 + self.mid_grid[0] * self.mid_grid[1] + det_token_num
            backbone.mid_pos_embed = nn.Parameter(
                trunc_normal_(torch.zeros(len(backbone.blocks) - 1, 1, length, dim), std=0.02)
            )
        self.class_embed = MLP(dim, dim, num_classes + 1, 3)
        self.bbox_embed = MLP(dim, dim, 4, 3)

    @property
    def num_extra_tokens(self) -> int:
        """The [DET] tokens: in every block, never reduced by ToE."""
        return self.det_token_num

    def last_token_counts(self) -> tuple[int, int] | None:
        """(tokens fed to blocks 1.., tokens without ToE) of the last training forward, [DET] tokens included;
        None before the first."""
        return self._last_tokens

    def grid_of(self, size: Sequence[int]) -> tuple[int, int]:
        """Patch grid (rows, columns) of an image of ``size`` (H, W) pixels."""
        return size[0] // self.patch_size[0], size[1] // self.patch_size[1]

    def no_weight_decay(self) -> set[str]:
        """Parameters upstream keeps out of weight decay (besides biases and norms)."""
        return {"backbone.pos_embed", "backbone.cls_token", "backbone.det_token"}

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding [1, 1 + h*w + D, C] of ``[cls, patches, det]`` for a ``grid`` = (h, w) input."""
        pos = cast(nn.Parameter, self.backbone.pos_embed)  # set in __init__
        if tuple(grid) == self.init_grid:
            return pos
        patches = resample_abs_pos_embed(
            pos[:, 1 : -self.det_token_num], list(grid), list(self.init_grid), 0, antialias=False
        )
        return torch.cat((pos[:, :1], patches, pos[:, -self.det_token_num :]), dim=1)

    def mid_position_embedding(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """Mid position embeddings [depth - 1, 1, 1 + h*w + D, C] for a ``grid`` input (None without them)."""
        if self.mid_grid is None:
            return None
        pos = cast(nn.Parameter, self.backbone.mid_pos_embed)  # set in __init__ with the mid grid
        if tuple(grid) == self.mid_grid:
            return pos
        layers, _, _, dim = pos.shape
        # every layer's embedding is interpolated on its own: stack the layers along the channels
        patches = pos[:, 0, 1 : -self.det_token_num].permute(1, 0, 2).reshape(1, -1, layers * dim)
        patches = resample_abs_pos_embed(patches, list(grid), list(self.mid_grid), 0, antialias=False)
        patches = patches.reshape(-1, layers, dim).permute(1, 0, 2).unsqueeze(1)
        return torch.cat((pos[:, :, :1], patches, pos[:, :, -self.det_token_num :]), dim=2)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The final [DET] tokens [B, D, C] of ``images`` [B, 3, H, W] (H, W multiples of the patch size)."""
        backbone = self.backbone
        x = backbone.patch_embed(images)  # [B, h, w, C]
        batch, grid = x.shape[0], (x.shape[1], x.shape[2])
        cls_token, det_token = cast(nn.Parameter, backbone.cls_token), cast(nn.Parameter, backbone.det_token)
        x = torch.cat((cls_token.expand(batch, -1, -1), x.flatten(1, 2), det_token.expand(batch, -1, -1)), dim=1)
        x = backbone.norm_pre(backbone.pos_drop(x + self.position_embedding(grid)))
        mid = self.mid_position_embedding(grid)
        index = None  # the selector's index when it reduced the tokens (also its ``last_index``)
        last = len(backbone.blocks) - 1
        for i, block in enumerate(backbone.blocks):
            if i == 1 and self.token_select is not None:
                x, index = self.select_tokens(x)
            x = checkpoint(block, x, use_reentrant=False) if self.use_checkpoint and self.training else block(x)
            if mid is not None and i < last:
                x = x + self.gather_position(mid[i], index)
        if self.training:
            self._last_tokens = (int(x.shape[1]), 1 + grid[0] * grid[1] + self.det_token_num)
        return backbone.norm(x)[:, -self.det_token_num :]

    def select_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ToE on ``x`` [B, 1 + P + D, C]: the class and patch tokens go through the selector, the [DET]
        tokens are put back after them untouched. Returns [B, 1 + M + D, C] and the selector's index
        [B, 1 + M] (None when it is inactive)."""
        body, det = x[:, : -self.det_token_num], x[:, -self.det_token_num :]
        selector = cast(TokenSelect, self.token_select)  # forward_features calls this only with ToE on
        try:
            body, index = selector(body, num_prefix_tokens=1)
        except ValueError as error:  # the schedule keeps no token of this (small) batch's patch grid
            raise UserError(
                f"{error} (a batch of {body.shape[1] - 1} patch tokens; the smallest images decide)"
            ) from None
        return torch.cat((body, det), dim=1), index

    def gather_position(self, pos: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """One block's mid position embedding ``pos`` [1, 1 + P + D, C] for the tokens ``index`` [B, 1 + M]
        kept by ToE: [B, 1 + M + D, C] (``pos`` itself when no token was dropped)."""
        if index is None:
            return pos
        det = pos[:, -self.det_token_num :].expand(index.shape[0], -1, -1)
        return torch.cat((pos[0, : -self.det_token_num][index], det), dim=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``images`` [B, 3, H, W] -> ``pred_logits`` [B, D, K+1], ``pred_boxes`` [B, D, 4] (cx, cy, w, h in 0..1)."""
        tokens = self.forward_features(images)
        return {"pred_logits": self.class_embed(tokens), "pred_boxes": self.bbox_embed(tokens).sigmoid()}


def _square_grid(num_patches: int) -> list[int]:
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"the backbone's position embedding has {num_patches} patch positions, not a square grid")
    return [side, side]
