"""Attach Token Expansion to timm VisionTransformer-family models without touching their code.

``apply_toe`` registers a forward hook on ``model.blocks[0]`` that passes the block's output through
``model.token_select`` (a :class:`TokenSelect` child module with no parameters or buffers), so the
state_dict keys stay those of the plain model, eval is untouched and gradient checkpointing keeps
working. The last forward's index is kept in ``model.toe_index`` for models with dense heads.
"""

from __future__ import annotations

import torch
from torch import nn

from .token_select import TokenSelect


class _ToEHook:
    """Forward hook on block 0: replaces its output by the reduced tokens of ``model.token_select``.

    Holds the model itself (not a weak reference) so that ``copy.deepcopy(model)`` (e.g. timm's
    ModelEma) yields a copy whose hook drives the copy's own selector.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens, index = model.token_select(output, num_prefix_tokens=model.num_prefix_tokens)
        model.toe_index = index
        return tokens


def apply_toe(model: nn.Module, token_select: TokenSelect | None = None) -> nn.Module:
    """Insert ToE after block 0 of ``model`` (in place) and return the model.

    Args:
        model: a timm VisionTransformer (deit_*, deit3_*, vit_*, distilled, register tokens, ...) or a
            model that declares ``supports_toe = True`` and has ``blocks`` and ``num_prefix_tokens``.
        token_select: the selector to use; default: the selector already attached, else the paper's
            DeiT settings. Assigning ``model.token_select = TokenSelect(...)`` later replaces it.

    Call it before ``torch.compile``: it makes torch.compile guard on module hooks (a process-wide
    setting, ``torch._dynamo.config.skip_nnmodule_hook_guards = False``), so compiled graphs of other
    models are not reused for this one; graphs compiled before the call do not know about the hook.
    """
    _check_supported(model)
    # torch.compile skips guards on module hooks by default, so a graph compiled for another instance of
    # the same model class (e.g. a plain baseline) would be reused for this one without the ToE hook
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    if not _toe_hooks(model):
        model.blocks[0].register_forward_hook(_ToEHook(model))
    if token_select is not None:
        model.token_select = token_select
    elif not isinstance(getattr(model, "token_select", None), TokenSelect):
        model.token_select = TokenSelect()
    model.toe_index = None
    return model


def remove_toe(model: nn.Module) -> nn.Module:
    """Detach ToE from ``model`` (in place): the model is a plain timm model again."""
    hooks = model.blocks[0]._forward_hooks if hasattr(model, "blocks") else {}
    for key in _toe_hooks(model):
        del hooks[key]
    for name in ("token_select", "toe_index"):
        if hasattr(model, name):
            delattr(model, name)
    return model


def has_toe(model: nn.Module) -> bool:
    """Whether ``apply_toe`` was applied to ``model``."""
    return bool(_toe_hooks(model))


def _toe_hooks(model: nn.Module) -> list[int]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        return []
    return [key for key, hook in blocks[0]._forward_hooks.items() if isinstance(hook, _ToEHook)]


def _check_supported(model: nn.Module) -> None:
    from timm.layers import PatchDropout
    from timm.models.vision_transformer import VisionTransformer

    name = type(model).__name__
    if not (isinstance(model, VisionTransformer) or getattr(model, "supports_toe", False)):
        raise TypeError(
            f"ToE supports timm VisionTransformer-family models (deit_*, deit3_*, vit_*) and LV-ViT, not {name}"
        )
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) < 2:
        raise ValueError(f"ToE needs a model with at least 2 transformer blocks; this {name} has fewer")
    patch_drop = getattr(model, "patch_drop", None)
    if isinstance(patch_drop, PatchDropout) and patch_drop.prob > 0:
        raise ValueError("ToE and patch dropout both drop tokens: create the model with patch_drop_rate=0")
