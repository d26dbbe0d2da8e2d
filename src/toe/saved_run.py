"""Rebuild a run's model and ToE settings from its recorded flags (a checkpoint's ``args``, args.json).

The recipes record their flags as a dict: in every checkpoint (``args``) and in the run folder
(``args.json``; ``args.yaml`` for recipes with YAML configs). The keys read here are the model flags
(``model``, ``input_size`` or ``img_size``, ``patch_size``, ``model_kwargs``) and the ToE flags of
:func:`toe.options.add_toe_arguments`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from torch import nn

from .engine.checkpoint import load_checkpoint
from .errors import UserError, state_dict_mismatch
from .models.factory import create_model, parse_model_kwargs
from .vpt import apply_vpt

TOE_FLAGS = (
    "expansion_step",
    "keep_rate",
    "initialization_keep_rate",
    "expansion_multiple_stage",
    "distance",
    "seeding",
    "token_reduction",
)


def model_kwargs_from_args(args: dict) -> dict:
    """``timm.create_model`` keyword arguments recorded in ``args``: image size, patch size, --model-kwargs."""
    size = args.get("input_size") or args.get("img_size")
    kwargs = {"img_size": size} if size else {}
    if args.get("patch_size"):
        kwargs["patch_size"] = args["patch_size"]
    kwargs.update(parse_model_kwargs(list(args.get("model_kwargs") or [])))
    return kwargs


def build_model(args: dict, num_classes: int = 1000, device: str | torch.device = "cpu") -> nn.Module:
    """The model ``args`` describe, untrained, on ``device`` (``"meta"``: shapes only, no memory): a timm
    model (``model``; with its prompts for the flags of ToE/vpt, ``vpt``), or a YOLOS detector for the flags of
    ToE/YOLOS (``det_token_num``)."""
    if args.get("det_token_num"):
        from .detection.model import YOLOS, create_backbone

        with torch.device(device):
            backbone = create_backbone(
                args["backbone_name"], **parse_model_kwargs(list(args.get("model_kwargs") or []))
            )
            return YOLOS(backbone, num_classes, args["det_token_num"], args["init_pe_size"], args.get("mid_pe_size"))
    if not args.get("model"):
        raise UserError("the recorded flags name no --model")
    with torch.device(device):
        model = create_model(args["model"], num_classes, **model_kwargs_from_args(args))
        if args.get("vpt"):
            apply_vpt(model, int(args.get("prompt_tokens") or 1), deep=args["vpt"] == "deep")
        return model


def toe_namespace(args: dict, overrides: argparse.Namespace | None = None) -> argparse.Namespace:
    """ToE flags for :func:`toe.options.token_select_from_args`: those given in ``overrides`` (None = left
    out), else the recorded ``args``; what both leave out takes the recipe's paper settings."""
    values = {key: args.get(key) for key in TOE_FLAGS}
    for key in TOE_FLAGS:
        if getattr(overrides, key, None) is not None:
            values[key] = getattr(overrides, key)
    values["distance"] = values["distance"] or "cosine"
    values["seeding"] = values["seeding"] or "reference"
    values["token_reduction"] = values["token_reduction"] or "toe"
    recipe = args.get("toe_recipe") or ("lvvit" if str(args.get("model", "")).startswith("lvvit") else "deit")
    return argparse.Namespace(**values, sparse_eval=False, toe_recipe=recipe, toe_always_on=True)


def trained_with_toe(args: dict) -> bool:
    """Whether the recorded flags ``args`` trained with ToE (a baseline run records none of its flags)."""
    return bool(args.get("toe_always_on") or args.get("toe") or any(args.get(key) is not None for key in TOE_FLAGS[:4]))


def read_run_args(output_dir: str | Path) -> dict | None:
    """The flags a run recorded in its folder (args.json, else args.yaml), or None when there are none."""
    folder = Path(output_dir)
    for name in ("args.json", "args.yaml"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            text = path.read_text()
            args = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise UserError(f"{path} is not readable ({type(error).__name__}: {error})") from None
        if isinstance(args, dict):
            return args
    return None


def model_from_checkpoint(
    path: str | Path, ema: bool = False, flag: str = "--checkpoint", model_args: dict | None = None
) -> tuple[nn.Module, dict]:
    """The model a checkpoint holds (its ``model`` or ``model_ema`` weights) on the CPU, built from the flags
    it recorded (``args``: ours, or an upstream run's), else from ``model_args`` (the model flags given on the
    command line, for weights-only files such as TokenLabeling's released weights); returns ``(model, args)``."""
    state = load_checkpoint(path, flag)
    recorded = state.get("args")
    if isinstance(recorded, dict) and recorded.get("model"):
        if model_args:
            raise UserError(
                f"{flag} {path} records its own model flags; leave out --model, --input-size, --patch-size "
                "and --model-kwargs"
            )
        args = recorded
    elif model_args and model_args.get("model"):
        args = model_args
    else:
        raise UserError(f"{flag} {path} records no model flags (args): name its model with --model")
    key = "model_ema" if ema else "model"
    if not isinstance(state.get(key), dict):
        raise UserError(f"{flag} {path} holds no EMA weights (trained with --no-model-ema); leave out --ema")
    weights = state[key]
    broken = next(
        (
            name
            for name, t in weights.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.isfinite().all()
        ),
        None,
    )
    if broken is not None:
        raise UserError(f"{flag} {path}: its {key} weights hold NaN or infinite values ({broken}; a diverged run?)")
    head = weights.get("head.weight")
    model = build_model(args, num_classes=head.shape[0] if isinstance(head, torch.Tensor) else 0)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise UserError(
            f"{flag} {path}: its weights do not fit {args['model']} built from its recorded flags "
            f"({state_dict_mismatch(error)})"
        ) from None
    return model, args
