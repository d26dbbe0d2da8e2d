"""Model creation for every command: timm's registry (with this project's models registered), user
mistakes as one :class:`~toe.errors.UserError` naming the flag."""

from __future__ import annotations

import ast

import timm
from torch import nn

from ..errors import UserError


def parse_model_kwargs(pairs: list[str]) -> dict:
    """``["depth=6", "embed_dim=96"]`` -> ``{"depth": 6, "embed_dim": 96}`` (values as Python literals)."""
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--model-kwargs expects KEY=VALUE pairs, got {pair!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """``timm.create_model(name, num_classes=..., **kwargs)`` with user mistakes as :class:`UserError`."""
    if not timm.is_model(name):
        raise UserError(f"--model {name} is not a timm model name (see timm.list_models())")
    size = kwargs.get("img_size")
    if size is not None and max(size if isinstance(size, (tuple, list)) else [size]) > MAX_INPUT_SIZE:
        raise UserError(f"--input-size {size} is beyond {MAX_INPUT_SIZE} px per side (an image size, in pixels)")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except (TypeError, AssertionError, ValueError, ZeroDivisionError, RuntimeError) as error:  # e.g. num_heads=0
        given = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise UserError(f"--model {name} cannot be built with {given}: {error}") from None


MAX_INPUT_SIZE = 4096  # pixels per side: 65536 patches of 16 px, far beyond what any device trains


def check_input_size(model: nn.Module, input_size: int) -> None:
    """ViT inputs must be a whole number of patches."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and (input_size % patch[0] or input_size % patch[-1]):
        raise UserError(f"--input-size {input_size} is not divisible by the patch size {patch[0]}")
