"""Building blocks every recipe shares: engine flags, model creation, fine-tuning, EMA, wrapping, output folder."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import timm
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..engine import DistInfo, TrainingRun, load_weights, resume
from ..engine.precision import AMP_DTYPES
from ..engine.trainer import auto_resume
from ..options import UserError


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the shared engine that the upstream recipes lack (precision, compile, resume, ...)."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--amp-dtype",
        choices=AMP_DTYPES,
        default="auto",
        help="autocast dtype: auto = bf16 on GPUs that support it, else fp16; fp32 on CPU",
    )
    group.add_argument("--no-amp", action="store_true", help="train in full fp32")
    group.add_argument("--apex-amp", action="store_true", help="accepted for compatibility: native AMP is used")
    group.add_argument("--compile", action="store_true", help="torch.compile the model")
    group.add_argument(
        "--auto-resume",
        action="store_true",
        help="resume from <output>/checkpoint.pth when it exists (checkpoint-prev.pth if it is damaged)",
    )
    group.add_argument(
        "--save-every-steps",
        type=int,
        default=0,
        metavar="N",
        help="also write checkpoint.pth every N optimizer updates within an epoch (0: off)",
    )
    group.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="replace unreadable images by the next readable one and count them, instead of stopping",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword arguments for timm.create_model, e.g. embed_dim=96 depth=6",
    )


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
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except (TypeError, AssertionError, ValueError) as error:
        given = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise UserError(f"--model {name} cannot be built with {given}: {error}") from None


def check_input_size(model: nn.Module, input_size: int) -> None:
    """ViT inputs must be a whole number of patches."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and (input_size % patch[0] or input_size % patch[-1]):
        raise UserError(f"--input-size {input_size} is not divisible by the patch size {patch[0]}")


def load_finetune_weights(model: nn.Module, source: str, flag: str = "--finetune") -> str:
    """Load pretrained weights for fine-tuning: heads of another class count are dropped and the
    position embedding is resampled (timm) to the model's grid. Returns a one-line report."""
    from timm.layers import resample_abs_pos_embed

    state = load_weights(source, flag)
    own = model.state_dict()
    dropped = [
        k
        for k in list(state)
        if k.startswith(("head", "head_dist", "aux_head")) and k in own and state[k].shape != own[k].shape
    ]
    for key in dropped:
        del state[key]
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
        )
    unknown = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        raise UserError(f"{flag} {source}: weights of another shape for {', '.join(mismatched[:3])}")
    missing, _ = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return (
        f"fine-tuning from {source}: {len(state) - len(unknown)} tensors loaded, "
        f"{len(dropped)} head tensors dropped, {len(missing)} left at init, {len(unknown)} ignored"
    )


def wrap_model(model: nn.Module, dist: DistInfo, compile_model: bool) -> nn.Module:
    """DDP (when distributed) then torch.compile (when asked): the module that runs the forward."""
    if dist.enabled:
        device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        model = torch.compile(model)
    return model


def prepare_output_dir(output_dir: str | None, resuming: bool, dist: DistInfo, flag: str) -> Path | None:
    """Create the run folder; refuse to write into a folder that holds another run unless resuming."""
    if not output_dir:
        return None
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    if not resuming and any((path / name).exists() for name in ("checkpoint.pth", "log.txt")):
        raise UserError(
            f"{flag} {path} already holds a run (checkpoint.pth / log.txt); pass --auto-resume to continue it "
            "or choose an empty folder"
        )
    if dist.is_main:
        path.mkdir(parents=True, exist_ok=True)
    return path


def save_args(path: Path | None, args: argparse.Namespace, dist: DistInfo, name: str = "args.json") -> dict:
    """The flags as plain data (for checkpoints), also written to ``path/name`` by the main process."""
    plain = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}
    if path is not None and dist.is_main:
        temp = path / f".{name}.tmp"
        temp.write_text(json.dumps(plain, indent=2) + "\n")
        temp.replace(path / name)
    return plain


def resume_as_asked(run: TrainingRun, resume_path: str, auto: bool) -> str | None:
    """Load ``--resume FILE``, else (``auto``) the newest checkpoint of the output folder, into ``run``;
    returns the line to print, or None for a fresh start."""
    if resume_path:
        resume(run, resume_path)
        return f"resumed from {resume_path}: continuing at epoch {run.start_epoch}"
    return auto_resume(run) if auto else None


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
