"""Visual Prompt Tuning (VPT, Jia et al., ECCV 2022) as a plug-in on timm VisionTransformer models.

``apply_vpt(model, num_tokens=50, deep=True)`` freezes the model but its classification head and inserts
``num_tokens`` learnable prompt tokens right after the prefix (class) token(s), in front of the patch tokens,
at the input of block 0 (VPT-shallow); VPT-deep also replaces, at the input of every later block, the prompt
outputs of the block before by that block's own prompts. The final norm's output leaves the prompts out
again, so the head, its pooling and any code after ``forward_features`` see the plain model's tokens.

It works with forward hooks, as :func:`toe.apply_toe` does: no model code changes, the plain model's
``state_dict`` keys stay as they are, and the prompts add two keys, ``vpt.prompt_embeddings`` [1, N, C]
and (deep) ``vpt.deep_prompt_embeddings`` [depth - 1, N, C], the names and shapes of the official VPT code.
With ToE attached (in either order), the prompts are prefix tokens for it: never scored, merged or dropped.

    model = timm.create_model("vit_base_patch16_224", pretrained=True, num_classes=100)
    apply_vpt(model, num_tokens=50, deep=True, dropout=0.1)   # only model.vpt and model.head train
    apply_toe(model, TokenSelect(...))                        # optional, before or after
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from .integration import sync_prefix_tokens

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

HEAD_PREFIXES = ("head.", "head_dist.")  # the classification head(s) that train with the prompts


class VisualPrompts(nn.Module):
    """The prompt tokens of VPT and their dropout: ``prompt_embeddings`` [1, N, C] enter at block 0,
    ``deep_prompt_embeddings`` [depth - 1, N, C] (VPT-deep only) replace the prompts at blocks 1...

    Initialised as the official code does: uniform in +-sqrt(6 / (3 * patch_area + C)), Xavier's bound for
    a patch-embedding-sized fan-in.
    """

    def __init__(self, embed_dim: int, depth: int, num_tokens: int, deep: bool, dropout: float, patch_area: int):
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_area + embed_dim))
        self.num_tokens = num_tokens
        self.deep = deep
        self.dropout = nn.Dropout(dropout)
        self.prompt_embeddings = nn.Parameter(torch.empty(1, num_tokens, embed_dim).uniform_(-bound, bound))
        if deep:
            deep_prompts = torch.empty(depth - 1, num_tokens, embed_dim).uniform_(-bound, bound)
            self.deep_prompt_embeddings = nn.Parameter(deep_prompts)
        self._frozen: dict[str, bool] = {}  # requires_grad of every model parameter before apply_vpt

    def prompts(self, block: int, batch: int) -> torch.Tensor:
        """The prompts entering ``block`` (0: the input prompts), [batch, N, C], after dropout."""
        table = self.prompt_embeddings[0] if block == 0 else self.deep_prompt_embeddings[block - 1]
        return self.dropout(table.expand(batch, -1, -1))

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, deep={self.deep}"


class _InsertPrompts:
    """Forward pre-hook on block 0: [B, prefix + P, C] -> [B, prefix + N + P, C]."""

    def __init__(self, prompts: VisualPrompts, num_prefix_tokens: int) -> None:
        self.prompts, self.prefix = prompts, num_prefix_tokens

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        prompts = self.prompts.prompts(0, x.shape[0]).to(x.dtype)
        return (torch.cat((x[:, : self.prefix], prompts, x[:, self.prefix :]), dim=1), *rest)


class _ReplacePrompts:
    """Forward pre-hook on block ``index`` >= 1 (VPT-deep): the N tokens after the prefix, the previous block's
    prompt outputs, are replaced by this block's prompts; [B, prefix + N + M, C] keeps its shape (M: the patch
    tokens, fewer than P while ToE reduces them)."""

    def __init__(self, prompts: VisualPrompts, num_prefix_tokens: int, index: int) -> None:
        self.prompts, self.prefix, self.index = prompts, num_prefix_tokens, index

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        prompts = self.prompts.prompts(self.index, x.shape[0]).to(x.dtype)
        end = self.prefix + self.prompts.num_tokens
        return (torch.cat((x[:, : self.prefix], prompts, x[:, end:]), dim=1), *rest)


class _DropPrompts:
    """Forward hook on the final norm: [B, prefix + N + M, C] -> [B, prefix + M, C], the plain model's layout."""

    def __init__(self, prompts: VisualPrompts, num_prefix_tokens: int) -> None:
        self.prompts, self.prefix = prompts, num_prefix_tokens

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.cat((output[:, : self.prefix], output[:, self.prefix + self.prompts.num_tokens :]), dim=1)


_VPT_HOOKS = (_InsertPrompts, _ReplacePrompts, _DropPrompts)


def apply_vpt(model: nn.Module, num_tokens: int = 50, deep: bool = True, dropout: float = 0.1) -> nn.Module:
    """Prompt-tune ``model`` (in place): add ``num_tokens`` prompts (``deep``: a set per block), freeze every
    parameter but the prompts and the classification head; returns the model.

    Args:
        model: a timm VisionTransformer (vit_*, deit_*, deit3_*, distilled, register tokens, ...) with
            ``num_prefix_tokens``, ``blocks``, ``norm`` and ``head``.
        num_tokens: prompt tokens N (VPT: 1 to 200; 10, 50 and 100 are common).
        deep: VPT-deep (prompts at every block) or VPT-shallow (at block 0 only).
        dropout: dropout on the prompts (VPT's configs: 0.1).

    Raises TypeError for a model that is not a VisionTransformer, ValueError for bad arguments or a model with
    VPT already applied. The random initial prompts come from torch's global generator (seed it first).
    """
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"VPT supports timm VisionTransformer models (vit_*, deit_*), not {type(model).__name__}")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive integer, got {num_tokens!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    if has_vpt(model):
        raise ValueError("VPT is already applied to this model: call remove_vpt first")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("VPT needs a model whose head reads the final norm's tokens; this one pools by attention")
    depth, prefix = len(model.blocks), model.num_prefix_tokens
    patch_area = math.prod(model.patch_embed.patch_size)
    param = next(model.parameters())
    prompts = VisualPrompts(model.embed_dim, depth, num_tokens, deep, dropout, patch_area)
    prompts.to(device=param.device, dtype=param.dtype)
    prompts._frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(HEAD_PREFIXES)
    model.vpt = prompts
    model.blocks[0].register_forward_pre_hook(_InsertPrompts(prompts, prefix))
    if deep:
        for index in range(1, depth):
            model.blocks[index].register_forward_pre_hook(_ReplacePrompts(prompts, prefix, index))
    model.norm.register_forward_hook(_DropPrompts(prompts, prefix))
    sync_prefix_tokens(model)  # an attached ToE keeps the prompts with the prefix
    return model


def remove_vpt(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_vpt` (in place): the prompts and hooks go, every parameter's ``requires_grad`` is
    what it was before; returns the plain model (ToE, if attached, stays)."""
    prompts = getattr(model, "vpt", None)
    if not isinstance(prompts, VisualPrompts):
        return model
    vit = cast("VisionTransformer", model)  # apply_vpt's: it takes no other model
    for module in (*vit.blocks, vit.norm):  # by type, not by handle: a deepcopy's handles point at the original
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [key for key, hook in hooks.items() if isinstance(hook, _VPT_HOOKS)]:
                del hooks[key]
    del model.vpt
    for name, parameter in model.named_parameters():
        parameter.requires_grad = prompts._frozen.get(name, parameter.requires_grad)
    sync_prefix_tokens(model)
    return model


def has_vpt(model: nn.Module) -> bool:
    """Whether :func:`apply_vpt` was applied to ``model``."""
    return isinstance(getattr(model, "vpt", None), VisualPrompts)
