"""LV-ViT (Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision Transformers"), timm-style.

A ViT with a 4-layer convolutional stem, pre-norm blocks whose residual branches are scaled by
1 / ``skip_lam``, MLP ratio 3, a class head on the class token and a dense auxiliary head on every patch
token. Registered in timm's registry as ``lvvit_t``, ``lvvit_s``, ``lvvit_m``, ``lvvit_l``, so
``timm.create_model("lvvit_s")`` works once :mod:`toe` is imported.

Outputs:
- eval, or training with ``return_dense=False``: ``cls_logits + 0.5 * max over tokens of aux_logits`` [B, K];
- training with ``return_dense=True``: ``(cls_logits [B, K], aux_logits [B, P, K], lam)`` where, with
  ``mix_token=True``, MixToken replaced a CutMix box of the token grid by the tokens of the batch-flipped
  sample; ``aux_logits`` are already un-mixed (row b holds sample b's own dense predictions) and ``lam``
  (1 - box area / P) is the weight of each sample's own class target.

Token Expansion (``toe.apply_toe``) reduces the tokens after block 0; after the final norm the reduced
tokens are scattered back to their original positions (zeros where tokens were merged away), so the
dense head and MixToken's un-mixing always see the full grid.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.mixup import cutmix_bbox_and_lam
from timm.layers import Attention, DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["LVViT", "ConvStem", "scatter_tokens", "swap_box"]


class ConvStem(nn.Module):
    """The 4-layer stem: 7x7 stride 2, 3x3, 3x3 (conv-BN-ReLU each), then a (patch/2) x (patch/2) stride
    patch/2 projection to ``embed_dim``: [B, 3, H, W] -> [B, (H/patch) * (W/patch), embed_dim].

    The final projection is called ``embed`` (not ``proj``): it does not read the image.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        stem_chans: int = 64,
        embed_dim: int = 384,
    ) -> None:
        super().__init__()
        if patch_size < 2 or patch_size % 2:
            raise ValueError(f"LV-ViT's stem needs an even patch size (stride 2, then patch/2), got {patch_size}")
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"image size {self.img_size} is not divisible by the patch size {patch_size}")
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers = []
        for i, (kernel, stride) in enumerate(((7, 2), (3, 1), (3, 1))):
            layers += [
                nn.Conv2d(in_chans if i == 0 else stem_chans, stem_chans, kernel, stride, kernel // 2, bias=False),
                nn.BatchNorm2d(stem_chans),
                nn.ReLU(inplace=True),
            ]
        self.stem = nn.Sequential(*layers)
        self.embed = nn.Conv2d(stem_chans, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"LV-ViT built for {self.img_size} images got {tuple(x.shape[-2:])}")
        return self.embed(self.stem(x)).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm transformer block whose residual branches are divided by ``skip_lam``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        skip_lam: float = 1.0,
    ) -> None:
        super().__init__()
        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x))) / self.skip_lam
        return x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam


class LVViT(nn.Module):
    """LV-ViT: conv stem, class token, ``depth`` blocks, class head and dense auxiliary head."""

    supports_toe = True  # toe.apply_toe may hook blocks[0]; forward_features scatters the tokens back

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 16,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        skip_lam: float = 1.0,
        stem_chans: int = 64,
        return_dense: bool = True,
        mix_token: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.return_dense = return_dense
        self.mix_token = mix_token
        self.patch_embed = ConvStem(img_size, patch_size, in_chans, stem_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = np.linspace(0, drop_path_rate, depth).tolist()  # not torch: models are also built on meta
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate, skip_lam)
                for rate in rates
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New class and auxiliary heads for ``num_classes`` (0: identity, features only)."""
        self.num_classes = num_classes
        for name in ("head", "aux_head"):
            head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
            head.apply(_init_weights)
            setattr(self, name, head.to(self.cls_token.device))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> normalised tokens [B, 1 + P, C] (class token first, full grid)."""
        return self._encode(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B, 1 + P, C] -> cls logits + 0.5 * max over tokens of the aux logits [B, K]
        (``pre_logits``: the class token's features [B, C])."""
        if pre_logits:
            return x[:, 0]
        return self.head(x[:, 0]) + 0.5 * self.aux_head(x[:, 1:]).max(dim=1).values

    def forward(self, x: torch.Tensor):
        if not (self.training and self.return_dense):
            return self.forward_head(self.forward_features(x))
        patches = self.patch_embed(x)
        box, lam = None, 1.0
        if self.mix_token:
            box, lam = self._token_box()
            patches = swap_box(patches, self.patch_embed.grid_size, box)
        tokens = self._encode(patches)
        aux = self.aux_head(tokens[:, 1:])
        if box is not None:
            aux = swap_box(aux, self.patch_embed.grid_size, box)  # un-mix: the swap is its own inverse
        return self.head(tokens[:, 0]), aux, lam

    def _encode(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch embeddings [B, P, C] -> class token + position embedding -> blocks -> norm [B, 1 + P, C].

        With ToE, blocks 1.. see fewer tokens; they are put back at their positions after the norm.
        """
        x = torch.cat((self.cls_token.expand(patches.shape[0], -1, -1), patches), dim=1) + self.pos_embed
        x = self.norm(self.blocks(self.pos_drop(x)))
        select = getattr(self, "token_select", None)  # attached by toe.apply_toe
        index = select.last_index if select is not None else None
        if index is not None:
            x = scatter_tokens(x, index, self.pos_embed.shape[1])
        return x

    def _token_box(self) -> tuple[tuple[int, int, int, int], float]:
        """A CutMix box (y0, y1, x0, x1) on the token grid for lambda ~ Beta(1, 1), and the corrected
        lambda 1 - box area / P (numpy's RNG, which the engine seeds per epoch)."""
        box, lam = cutmix_bbox_and_lam(self.patch_embed.grid_size, np.random.beta(1.0, 1.0))
        return tuple(int(v) for v in box), float(lam)


def scatter_tokens(tokens: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
    """Put ``tokens`` [B, M, C] at positions ``index`` [B, M] of a zero sequence [B, length, C]."""
    batch, kept, channels = tokens.shape
    rows = (index + torch.arange(batch, device=index.device).unsqueeze(1) * length).reshape(-1)
    full = tokens.new_zeros(batch * length, channels)
    return full.index_copy(0, rows, tokens.reshape(batch * kept, channels)).view(batch, length, channels)


def swap_box(x: torch.Tensor, grid_size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """Tokens [B, h*w, D] of a h x w grid with those inside ``box`` (y0, y1, x0, x1) taken from the
    batch-flipped sample (row b gets row B-1-b). Applying it twice gives ``x`` back."""
    y0, y1, x0, x1 = box
    inside = torch.zeros(grid_size, dtype=torch.bool, device=x.device)
    inside[y0:y1, x0:x1] = True
    return torch.where(inside.view(1, -1, 1), x.flip(0), x)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.stem.0",
        "classifier": ("head", "aux_head"),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in ("lvvit_t", "lvvit_s", "lvvit_m", "lvvit_l")})


def _create(variant: str, pretrained: bool, **kwargs) -> LVViT:
    return build_model_with_cfg(LVViT, variant, pretrained, **kwargs)


@register_model
def lvvit_t(pretrained: bool = False, **kwargs) -> LVViT:
    """LV-ViT-T: width 240, 12 blocks, 4 heads (about 8.5M parameters)."""
    args = dict(embed_dim=240, depth=12, num_heads=4, mlp_ratio=3.0, skip_lam=1.0)
    return _create("lvvit_t", pretrained, **{**args, **kwargs})


@register_model
def lvvit_s(pretrained: bool = False, **kwargs) -> LVViT:
    """LV-ViT-S: width 384, 16 blocks, 6 heads, skip_lam 2 (about 26M parameters, 6.6 GFLOPs at 224)."""
    args = dict(embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, skip_lam=2.0)
    return _create("lvvit_s", pretrained, **{**args, **kwargs})


@register_model
def lvvit_m(pretrained: bool = False, **kwargs) -> LVViT:
    """LV-ViT-M: width 512, 20 blocks, 8 heads, skip_lam 2 (about 56M parameters)."""
    args = dict(embed_dim=512, depth=20, num_heads=8, mlp_ratio=3.0, skip_lam=2.0)
    return _create("lvvit_m", pretrained, **{**args, **kwargs})


@register_model
def lvvit_l(pretrained: bool = False, **kwargs) -> LVViT:
    """LV-ViT-L: width 768, 24 blocks, 12 heads, 128-channel stem, skip_lam 3 (about 150M parameters)."""
    args = dict(embed_dim=768, depth=24, num_heads=12, mlp_ratio=3.0, skip_lam=3.0, stem_chans=128)
    return _create("lvvit_l", pretrained, **{**args, **kwargs})
