"""Analytic forward cost of a ViT under a ToE schedule (the ``toe flops`` command).

Costs are multiply-accumulates (MACs) per image, the unit DeiT and the ToE paper call "FLOPs"
(DeiT-S: 4.60 G). A transformer block on N tokens of width C with MLP ratio r costs
(4 + 2r) N C^2 (qkv, projection, MLP) + 2 N^2 C (attention scores and weighted sum). ToE runs block 0
on all tokens and blocks 1.. on prefix + M tokens (+ YOLOS's [DET] tokens, which ToE leaves alone, in every
block). Training costs about 3x the forward in every stage,
so the ratios below are also the training-compute ratios. Norms, activations and softmax are not
counted (as in fvcore and torch.utils.flop_counter).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from .integration import PatchEmbedding, prefix_tokens
from .schedule import ToESchedule

if TYPE_CHECKING:
    from .detection.model import YOLOS


@dataclass(frozen=True)
class ViTShape:
    """What the cost of a ViT forward depends on."""

    embed_dim: int
    depth: int
    mlp_ratio: float
    num_patches: int
    num_prefix_tokens: int
    stem_macs: float  # a whole number, but fractional in at_tokens' shapes at an epoch's mean patch count
    head_macs: int
    dense_head_macs: int = 0  # per-token heads that see the full (scattered-back) grid, e.g. LV-ViT
    num_extra_tokens: int = 0  # tokens every block sees and ToE never touches: YOLOS's [DET] tokens
    size_per_batch: bool = False  # the input size changes from batch to batch (YOLOS): see at_tokens()


@dataclass(frozen=True)
class StageCost:
    """One row of the schedule table: a stage, its epochs [first, end) and its forward cost."""

    stage: int
    first_epoch: int
    end_epoch: int
    tokens: int  # sequence length fed to blocks 1.. (prefix + M)
    macs: float

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.first_epoch


def block_macs(embed_dim: int, mlp_ratio: float, tokens: float) -> float:
    """MACs of one pre-norm transformer block on ``tokens`` tokens."""
    return (4 + 2 * mlp_ratio) * tokens * embed_dim**2 + 2 * tokens**2 * embed_dim


def forward_macs(shape: ViTShape, kept: float | None = None) -> float:
    """MACs of one image's forward with ``kept`` patch tokens after block 0 (None = all; an epoch's mean may
    be a fraction)."""
    full = shape.num_prefix_tokens + shape.num_patches + shape.num_extra_tokens
    reduced = shape.num_prefix_tokens + (shape.num_patches if kept is None else kept) + shape.num_extra_tokens
    blocks = block_macs(shape.embed_dim, shape.mlp_ratio, full)
    blocks += (shape.depth - 1) * block_macs(shape.embed_dim, shape.mlp_ratio, reduced)
    return shape.stem_macs + blocks + shape.head_macs + shape.dense_head_macs


def kept_patches(shape: ViTShape, tokens: float) -> float:
    """The patch tokens among ``tokens`` fed to blocks 1.. (prefix and extra tokens taken off)."""
    return tokens - shape.num_prefix_tokens - shape.num_extra_tokens


def at_tokens(shape: ViTShape, full_tokens: float | None) -> ViTShape:
    """For a model whose input size changes per batch (``size_per_batch``), its shape at the patch count of
    ``full_tokens`` (the full sequence length, as logged: an epoch's mean); other shapes as they are."""
    if not shape.size_per_batch or full_tokens is None:
        return shape
    patches = kept_patches(shape, full_tokens)
    return replace(shape, num_patches=patches, stem_macs=shape.stem_macs * patches / shape.num_patches)


def selection_macs(shape: ViTShape, kept: int) -> float:
    """MACs of ToE's cosine scoring: every patch token against each of the ``kept`` selected tokens."""
    return shape.num_patches * kept * shape.embed_dim


def vit_shape(model: nn.Module) -> ViTShape:
    """Read a :class:`ViTShape` off a timm VisionTransformer-family model (any device, meta too)."""
    from torch.utils.flop_counter import FlopCounterMode

    blocks = cast(nn.Sequential, model.blocks)
    fc1 = getattr(getattr(blocks[0], "mlp", None), "fc1", None)
    if not isinstance(fc1, nn.Linear):
        raise TypeError(f"cannot read the MLP width of {type(model).__name__}: blocks[0].mlp.fc1 is not a Linear")
    param = next(model.parameters())
    patch_embed = cast(PatchEmbedding, model.patch_embed)
    in_chans = getattr(getattr(patch_embed, "proj", None), "in_channels", 3)
    image = torch.zeros(1, in_chans, *patch_embed.img_size, device=param.device, dtype=param.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        patch_embed(image)
    heads = [m for name in ("head", "head_dist") if isinstance(m := getattr(model, name, None), nn.Linear)]
    dense = getattr(model, "aux_head", None)
    return ViTShape(
        embed_dim=cast(int, model.embed_dim),
        depth=len(blocks),
        mlp_ratio=fc1.out_features / fc1.in_features,
        num_patches=patch_embed.num_patches,
        num_prefix_tokens=prefix_tokens(model),  # VPT's prompts too: every block sees them
        stem_macs=counter.get_total_flops() // 2,
        head_macs=sum(h.in_features * h.out_features for h in heads),
        dense_head_macs=(
            dense.in_features * dense.out_features * patch_embed.num_patches if isinstance(dense, nn.Linear) else 0
        ),
    )


def yolos_shape(model: nn.Module, height: int, width: int) -> ViTShape:
    """The :class:`ViTShape` of a YOLOS detector (:class:`toe.detection.model.YOLOS`) on ``height`` x ``width``
    images: its backbone's blocks on the image's patch grid, its [DET] tokens as extra tokens and its
    3-layer class and box heads on every [DET] token as the head."""
    yolos = cast("YOLOS", model)
    backbone = yolos.backbone
    rows, cols = yolos.grid_of((height, width))
    plain = vit_shape(backbone)
    stem = plain.stem_macs * rows * cols // backbone.patch_embed.num_patches
    layers = (cast(nn.Linear, layer) for mlp in (yolos.class_embed, yolos.bbox_embed) for layer in mlp.layers)
    heads = sum(layer.in_features * layer.out_features for layer in layers)
    return ViTShape(
        embed_dim=plain.embed_dim,
        depth=plain.depth,
        mlp_ratio=plain.mlp_ratio,
        num_patches=rows * cols,
        num_prefix_tokens=1,
        stem_macs=stem,
        head_macs=heads * yolos.det_token_num,
        num_extra_tokens=yolos.det_token_num,
        size_per_batch=True,
    )


def schedule_costs(shape: ViTShape, schedule: ToESchedule | None, epochs: int) -> list[StageCost]:
    """Forward cost of every stage of ``schedule`` over ``epochs`` epochs (None: one full-token row)."""
    full_tokens = shape.num_prefix_tokens + shape.num_patches + shape.num_extra_tokens
    if schedule is None:
        return [StageCost(0, 0, epochs, full_tokens, forward_macs(shape))]
    counts = schedule.token_counts(shape.num_patches)
    rows = []
    for stage, first, end in schedule.stage_epochs(epochs):
        if schedule.is_active(stage):
            kept = counts.kept_in(stage)
            tokens = shape.num_prefix_tokens + kept + shape.num_extra_tokens
            rows.append(StageCost(stage, first, end, tokens, forward_macs(shape, kept)))
        else:
            rows.append(StageCost(stage, first, end, full_tokens, forward_macs(shape)))
    return rows


def schedule_speedup(shape: ViTShape, costs: list[StageCost]) -> float:
    """Full-token compute over the schedule's compute, for the same epochs."""
    total_epochs = sum(row.epochs for row in costs)
    return total_epochs * forward_macs(shape) / sum(row.epochs * row.macs for row in costs)


def format_costs(name: str, shape: ViTShape, costs: list[StageCost]) -> str:
    """The ``toe flops`` table."""
    full = forward_macs(shape)
    epochs = sum(row.epochs for row in costs)
    extra = f" + {shape.num_extra_tokens} [DET] (never reduced)" if shape.num_extra_tokens else ""
    lines = [
        f"{name}: {shape.num_patches} patch tokens + {shape.num_prefix_tokens} prefix{extra}, "
        f"{shape.depth} blocks of width {shape.embed_dim}",
        "GFLOPs = forward multiply-adds per image, as DeiT reports them; training costs about 3x in every stage",
        "",
        f"{'stage':>5}  {'epochs':>11}  {'patch tokens (blocks 1..)':>25}  {'GFLOPs':>7}  {'vs full':>7}",
    ]
    for row in costs:
        span = f"{row.first_epoch}-{row.end_epoch - 1}"
        kept = f"{kept_patches(shape, row.tokens)} of {shape.num_patches}"
        lines.append(f"{row.stage:>5}  {span:>11}  {kept:>25}  {row.macs / 1e9:>7.2f}  {full / row.macs:>6.2f}x")
    lines += [
        "",
        f"full-token: {full / 1e9:.2f} GFLOPs per image; whole schedule over {epochs} epochs: "
        f"{schedule_speedup(shape, costs):.2f}x less compute than full-token training",
    ]
    return "\n".join(lines)
