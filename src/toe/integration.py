"""Attach Token Expansion to timm VisionTransformer-family models without touching their code.

``apply_toe`` registers a forward hook on ``model.blocks[0]`` that passes the block's output through the
model's :class:`TokenSelect` (``model.token_select``, a child module with no parameters or buffers), so
the state_dict keys stay those of the plain model, eval is untouched and gradient checkpointing keeps
working. The hook holds only the selector and the prefix-token count, not the model (no reference
cycle: a model is freed as soon as it is dropped); the last forward's index is the selector's
``last_index``, for models with dense heads. Assigning ``model.token_select = TokenSelect(...)`` points
the hook at the new selector (a module-registration hook of torch follows the assignment).
"""

from __future__ import annotations

from typing import Protocol, cast, runtime_checkable

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from .token_select import TokenSelect


class _ToEHook:
    """Forward hook on block 0: replaces its output [B, N, C] by the selector's reduced tokens.

    ``copy.deepcopy(model)`` (e.g. timm's ModelEma) copies the hook with the model, so the copy's hook
    drives the copy's own selector.
    """

    def __init__(self, selector: TokenSelect, num_prefix_tokens: int) -> None:
        self.selector = selector
        self.num_prefix_tokens = num_prefix_tokens

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.selector(output, num_prefix_tokens=self.num_prefix_tokens)
        return tokens


def _follow_selector(module: nn.Module, name: str, submodule: nn.Module) -> None:
    """Module-registration hook: ``model.token_select = selector`` on a ToE model re-points its hook."""
    if name == "token_select" and isinstance(submodule, TokenSelect):
        for hook in _toe_hooks(module).values():
            hook.selector = submodule


@runtime_checkable
class SelectsTokensItself(Protocol):
    """What a model that calls ToE itself offers the library and the engine, instead of ``apply_toe``'s hook
    (YOLOS: its [DET] tokens bypass the selector and its input size changes per batch).

    - ``selects_tokens_itself = True``: ``has_toe`` asks for ``token_select`` instead of a hook;
    - ``token_select``: the :class:`TokenSelect` the model calls after block 0 on its prefix + patch tokens,
      or None (ToE off); the engine sets its stage each epoch, as for a hooked ViT;
    - ``num_prefix_tokens``: tokens before the patches that ToE keeps (the class token);
    - ``num_extra_tokens``: tokens every block sees and ToE never reduces ([DET] tokens), counted with the
      prefix by the engine's summary lines and ``toe report``;
    - ``last_token_counts()``: (tokens fed to blocks 1.., tokens without ToE) of the last training forward,
      None before the first: the engine averages them over an epoch (``toe_tokens`` / ``full_tokens``).
    """

    selects_tokens_itself: bool
    token_select: TokenSelect | None
    num_prefix_tokens: int

    @property
    def num_extra_tokens(self) -> int: ...

    def last_token_counts(self) -> tuple[int, int] | None: ...


class PatchEmbedding(Protocol):
    """What toe reads of a ViT's patch embedding (timm's PatchEmbed, LV-ViT's ConvStem)."""

    img_size: tuple[int, int]
    grid_size: tuple[int, int]
    num_patches: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


_registration = None  # the process-wide handle of _follow_selector, registered by the first apply_toe


def apply_toe(model: nn.Module, token_select: TokenSelect | None = None) -> nn.Module:
    """Insert ToE after block 0 of ``model`` (in place) and return the model.

    Args:
        model: a timm VisionTransformer (deit_*, deit3_*, vit_*, distilled, register tokens, ...) or a
            model that declares ``supports_toe = True`` and has ``blocks`` and ``num_prefix_tokens``.
        token_select: the selector to use; default: the selector already attached, else the paper's
            DeiT settings. Assigning ``model.token_select = TokenSelect(...)`` later replaces it.

    Raises TypeError for a model ToE does not support, ValueError for one it cannot work with (fewer than
    2 blocks, patch dropout) or a schedule that keeps no token of its patches (see ``token_counts``).
    Call it before ``torch.compile``: it makes torch.compile guard on module hooks (a process-wide
    setting, ``torch._dynamo.config.skip_nnmodule_hook_guards = False``), so compiled graphs of other
    models are not reused for this one; graphs compiled before the call do not know about the hook.
    The first call also registers one process-wide module-registration hook (torch's
    ``register_module_module_registration_hook``) that follows ``model.token_select = ...`` assignments.
    """
    global _registration
    _check_supported(model)
    attached = getattr(model, "token_select", None)
    selector = token_select if token_select is not None else attached
    if not isinstance(selector, TokenSelect):
        selector = TokenSelect()
    patch_embed = cast(PatchEmbedding, model.patch_embed)
    selector.token_counts(patch_embed.num_patches)  # ValueError for a schedule that keeps no token
    # torch.compile skips guards on module hooks by default, so a graph compiled for another instance of
    # the same model class (e.g. a plain baseline) would be reused for this one without the ToE hook
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    if _registration is None:
        _registration = register_module_module_registration_hook(_follow_selector)
    if not _toe_hooks(model):
        blocks = cast("nn.Sequential | nn.ModuleList", model.blocks)  # as _check_supported found them
        blocks[0].register_forward_hook(_ToEHook(selector, prefix_tokens(model)))
    model.token_select = selector  # (re-)points the hook through _follow_selector
    selector.last_index = None
    return model


def remove_toe(model: nn.Module) -> nn.Module:
    """Detach ToE from ``model`` (in place): the model is a plain timm model again."""
    hooks = cast("nn.Sequential | nn.ModuleList", model.blocks)[0]._forward_hooks if hasattr(model, "blocks") else {}
    for key in _toe_hooks(model):
        del hooks[key]
    if hasattr(model, "token_select"):
        del model.token_select
    return model


def prefix_tokens(model: nn.Module) -> int:
    """The tokens in front of the patch tokens after block 0, which ToE keeps as they are: the model's prefix
    (class, distillation, register tokens) and VPT's prompt tokens (``model.vpt``, see :mod:`toe.vpt`)."""
    prompts = getattr(model, "vpt", None)
    return getattr(model, "num_prefix_tokens", 0) + getattr(prompts, "num_tokens", 0)


def sync_prefix_tokens(model: nn.Module) -> None:
    """Tell an attached ToE hook how many tokens lead the sequence (called when VPT adds or removes prompts)."""
    for hook in _toe_hooks(model).values():
        hook.num_prefix_tokens = prefix_tokens(model)


def train_toe(model: nn.Module) -> nn.Module:
    """Put every ToE selector in ``model`` (or in a DDP / torch.compile wrapper of it) in training mode, whatever
    the mode of the rest of the model: ToE then reduces the tokens of its stage in a training epoch also when
    the model itself trains in eval mode (DeiT's ``--no-train-mode``). ``model.eval()`` turns it off again."""
    for module in model.modules():
        if isinstance(module, TokenSelect):
            module.train()
    return model


def has_toe(model: nn.Module) -> bool:
    """Whether ``apply_toe`` was applied to ``model``, or the model calls its own ``token_select``
    (``selects_tokens_itself = True``, e.g. YOLOS, whose [DET] tokens bypass the selector) and has one."""
    if getattr(model, "selects_tokens_itself", False):
        return isinstance(getattr(model, "token_select", None), TokenSelect)
    return bool(_toe_hooks(model))


def _toe_hooks(model: nn.Module) -> dict[int, _ToEHook]:
    """The ToE hooks on ``model.blocks[0]`` by their handle ids (one after apply_toe, none before)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        return {}
    return {key: hook for key, hook in blocks[0]._forward_hooks.items() if isinstance(hook, _ToEHook)}


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
