"""LV-ViT (Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision Transformers"), timm-style.

A ViT with a 4-layer convolutional stem, pre-norm blocks whose residual branches are scaled by
1 / ``skip_lam``, MLP ratio 3, a class head on the class token and a dense auxiliary head on every patch
token. Registered in timm's registry as ``lvvit_t``, ``lvvit_s``, ``lvvit_m``, ``lvvit_l``, so
``timm.create_model("lvvit_s")`` works once :mod:`toe` is imported, and official TokenLabeling weights
load through :func:`checkpoint_filter_fn` (``pretrained_cfg_overlay=dict(file=...)``).

Outputs (timm's model contract):
- ``forward``: logits ``cls_logits + 0.5 * max over tokens of aux_logits`` [B, K], in train and eval mode;
  with ``num_classes=0`` the class token's features [B, C];
- ``forward_features``: the normalised tokens as an N x 1 map in NHWC, [B, 1 + P, 1, C] (timm's standard
  contract asks a 4-D map of every model outside its ViT list; ``.squeeze(2)`` gives the usual token
  sequence [B, 1 + P, C], class token first);
- ``forward_intermediates`` / ``features_only=True``: the patch tokens of chosen blocks as [B, C, h, w] maps.

Token labeling (the recipe switches it on with ``model.return_dense = True``): a training forward returns
``(cls_logits [B, K], aux_logits [B, P, K], lam)``; with ``mix_token = True`` MixToken first replaced a box
of the token grid by the tokens of the batch-flipped sample (upstream's box: ``cut // 2`` either side of a
random centre), ``aux_logits`` are already un-mixed (row b holds sample b's own dense predictions) and
``lam`` (1 - box area / P) is the weight of each sample's own class target.

Token Expansion (``toe.apply_toe``) reduces the tokens after block 0; after the final norm the reduced
tokens are scattered back to their original positions (zeros where tokens were merged away), so the
dense head and MixToken's un-mixing always see the full grid.
"""

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Attention, DropPath, Mlp, _assert, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

__all__ = ["LVViT", "ConvStem", "checkpoint_filter_fn", "rename_upstream_keys", "scatter_tokens", "swap_box"]

LAYER_NORM_EPS = 1e-5  # TokenLabeling's nn.LayerNorm default
GLOBAL_POOLS = ("token", "")  # token: class head + 0.5 x max of the dense head; '': every token, no pooling
# TokenLabeling's stem names -> ours (the stem is one nn.Sequential here: conv-BN-ReLU x 3, then ``embed``)
UPSTREAM_STEM = {
    "conv1": "stem.0",
    "bn1": "stem.1",
    "conv2": "stem.3",
    "bn2": "stem.4",
    "conv3": "stem.6",
    "bn3": "stem.7",
    "proj": "embed",
}


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
        device=None,
        dtype=None,
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
        dd = {"device": device, "dtype": dtype}
        layers = []
        for i, (kernel, stride) in enumerate(((7, 2), (3, 1), (3, 1))):
            layers += [
                nn.Conv2d(
                    in_chans if i == 0 else stem_chans, stem_chans, kernel, stride, kernel // 2, bias=False, **dd
                ),
                nn.BatchNorm2d(stem_chans, **dd),
                nn.ReLU(inplace=True),
            ]
        self.stem = nn.Sequential(*layers)
        self.embed = nn.Conv2d(stem_chans, embed_dim, patch_size // 2, stride=patch_size // 2, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _assert(x.shape[-2] == self.img_size[0], f"LV-ViT expects {self.img_size[0]} x {self.img_size[1]} images")
        _assert(x.shape[-1] == self.img_size[1], f"LV-ViT expects {self.img_size[0]} x {self.img_size[1]} images")
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
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.skip_lam = skip_lam
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, **dd)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x))) / self.skip_lam
        return x + self.drop_path(self.mlp(self.norm2(x))) / self.skip_lam


class LVViT(nn.Module):
    """LV-ViT: conv stem, class token, ``depth`` blocks, class head and dense auxiliary head."""

    supports_toe = True  # toe.apply_toe may hook blocks[0]; the tokens are scattered back after the norm

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
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
        return_dense: bool = False,
        mix_token: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"LV-ViT's global_pool is 'token' or '' (none), got {global_pool!r}")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.output_fmt = "NHWC"
        self.return_dense = return_dense
        self.mix_token = mix_token
        self.patch_embed = ConvStem(img_size, patch_size, in_chans, stem_chans, embed_dim, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim, **dd))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = np.linspace(0, drop_path_rate, depth).tolist()  # not torch: models are also built on meta
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate, skip_lam, **dd)
                for rate in rates
            ]
        )
        reduction = self.patch_embed.patch_size[0]
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=reduction) for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS, **dd)
        self.head = self._new_head(num_classes, **dd)
        self.aux_head = self._new_head(num_classes, **dd)
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
        """New class and auxiliary heads for ``num_classes`` (0: identity, features only), on the device and
        in the dtype and mode of the model; ``global_pool`` 'token' or '' (None keeps the current one)."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"LV-ViT's global_pool is 'token' or '' (none), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        like = self.cls_token
        for name in ("head", "aux_head"):
            head = self._new_head(num_classes, device=like.device, dtype=like.dtype)
            head.apply(_init_weights)
            setattr(self, name, head.train(self.training))

    def _new_head(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes > 0:
            return nn.Linear(self.embed_dim, num_classes, device=device, dtype=dtype)
        return nn.Identity()

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> normalised tokens [B, 1 + P, C] (class token first, full grid)."""
        return self._encode(self.patch_embed(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> normalised tokens as an NHWC map [B, 1 + P, 1, C] (class token first)."""
        return self.forward_tokens(x).unsqueeze(2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features [B, 1 + P, 1, C] (or tokens [B, 1 + P, C]) -> logits [B, K]: class head on the class
        token + 0.5 x max over the patch tokens of the auxiliary head. ``pre_logits`` or ``num_classes=0``:
        the class token's features [B, C]. With ``global_pool=''``: the features themselves (no classes) or
        the class head applied to every token."""
        if self.global_pool == "":
            return x if pre_logits or self.num_classes == 0 else self.head(x)
        tokens = x.flatten(1, -2)  # [B, 1 + P, C] from either layout
        if pre_logits or self.num_classes == 0:
            return tokens[:, 0]
        return self.head(tokens[:, 0]) + 0.5 * self.aux_head(tokens[:, 1:]).max(dim=1).values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_dense and self.training and not torch.jit.is_scripting():
            # a tuple, in training with return_dense only; the annotation stays Tensor, TorchScript's view
            return self.forward_dense(x)  # type: ignore[return-value]
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def forward_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Token labeling's training forward: ``(cls_logits [B, K], aux_logits [B, P, K], lam)``, with
        MixToken when ``mix_token`` is set (see the module docstring)."""
        patches = self.patch_embed(x)
        box, lam = None, 1.0
        if self.mix_token:
            box, lam = mix_token_box(self.patch_embed.grid_size)
            patches = swap_box(patches, self.patch_embed.grid_size, box)
        tokens = self._encode(patches)
        aux = self.aux_head(tokens[:, 1:])
        if box is not None:
            aux = swap_box(aux, self.patch_embed.grid_size, box)  # un-mix: the swap is its own inverse
        return self.head(tokens[:, 0]), aux, lam

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """The patch tokens after the chosen blocks (``indices``: the last n blocks if an int, all if None),
        as [B, C, h, w] maps ('NCHW') or [B, P, C] sequences ('NLC'); with ``norm`` passed through the final
        norm. Returns the list, or ``(final features, list)`` unless ``intermediates_only``. Without ToE."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be NCHW or NLC, got {output_fmt}")
        take, last = feature_take_indices(len(self.blocks), indices)
        x = self._embed_tokens(self.patch_embed(x))
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: last + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take:
                patches = (self.norm(x) if norm else x)[:, self.num_prefix_tokens :]
                if output_fmt == "NCHW":
                    h, w = self.patch_embed.grid_size
                    patches = patches.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append(patches)
        if intermediates_only:
            return intermediates
        return self.norm(x).unsqueeze(2), intermediates

    def _embed_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch embeddings [B, P, C] -> class token + position embedding [B, 1 + P, C]."""
        x = torch.cat((self.cls_token.expand(patches.shape[0], -1, -1), patches), dim=1) + self.pos_embed
        return self.pos_drop(x)

    def _encode(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch embeddings [B, P, C] -> blocks -> norm [B, 1 + P, C].

        With ToE, blocks 1.. see fewer tokens; they are put back at their positions after the norm.
        """
        x = self.norm(self.blocks(self._embed_tokens(patches)))
        select = getattr(self, "token_select", None)  # attached by toe.apply_toe
        index = select.last_index if select is not None else None
        if index is not None:
            x = scatter_tokens(x, index, self.pos_embed.shape[1])
        return x


def mix_token_box(grid_size: tuple[int, int]) -> tuple[tuple[int, int, int, int], float]:
    """MixToken's box (y0, y1, x0, x1) on a ``grid_size`` token grid and its lambda, as TokenLabeling draws
    them with numpy's RNG (which the engine seeds per epoch): lambda ~ Beta(1, 1), a side of
    ``int(side * sqrt(1 - lambda))`` per axis, a centre drawn row first, then column, and ``cut // 2``
    either side of it, clipped to the grid; the returned lambda is 1 - box area / P."""
    rows, cols = grid_size
    ratio = np.sqrt(1.0 - np.random.beta(1.0, 1.0))
    cut_rows, cut_cols = int(rows * ratio), int(cols * ratio)
    cy, cx = np.random.randint(rows), np.random.randint(cols)
    y0, y1 = (int(np.clip(cy + d, 0, rows)) for d in (-(cut_rows // 2), cut_rows // 2))
    x0, x1 = (int(np.clip(cx + d, 0, cols)) for d in (-(cut_cols // 2), cut_cols // 2))
    return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / (rows * cols)


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


def rename_upstream_keys(state_dict: dict) -> dict:
    """A state_dict in TokenLabeling's layout (stem ``patch_embed.conv1/bn1/.../proj``) with our names; any
    other state_dict (it has no ``patch_embed.conv1.weight``) is returned as it is."""
    if "patch_embed.conv1.weight" not in state_dict:
        return state_dict
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".", 2)
        if len(parts) == 3 and parts[0] == "patch_embed" and parts[1] in UPSTREAM_STEM:
            key = f"patch_embed.{UPSTREAM_STEM[parts[1]]}.{parts[2]}"
        renamed[key] = value
    return renamed


def checkpoint_filter_fn(state_dict: dict, model: LVViT) -> dict:
    """timm's pretrained filter: TokenLabeling (or our) weights -> ``model``'s state_dict layout: the stem
    renamed, a ``module.`` prefix dropped, the position embedding resampled (bicubic, timm) to the model's
    grid."""
    state_dict = state_dict.get("state_dict", state_dict.get("model", state_dict))
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    state_dict = rename_upstream_keys(state_dict)
    pos_embed = state_dict.get("pos_embed")
    if pos_embed is not None and pos_embed.shape != model.pos_embed.shape:
        state_dict["pos_embed"] = resample_abs_pos_embed(
            pos_embed, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=model.num_prefix_tokens
        )
    return state_dict


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
        "pool_size": (197, 1),  # forward_features: 1 + 14 * 14 tokens as an N x 1 map
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.stem.0",
        "classifier": ("head", "aux_head"),
        **kwargs,
    }


# TokenLabeling's evaluation crops: 0.9 of the resized image for T and S, the whole of it for M and L
default_cfgs = generate_default_cfgs(
    {
        "lvvit_t": _cfg(),
        "lvvit_s": _cfg(),
        "lvvit_m": _cfg(crop_pct=1.0),
        "lvvit_l": _cfg(crop_pct=1.0),
    }
)


def _create(variant: str, pretrained: bool, **kwargs) -> LVViT:
    return build_model_with_cfg(
        LVViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **kwargs,
    )


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
