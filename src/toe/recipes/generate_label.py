"""Token-label files for an ImageNet-layout folder (LV-ViT's generate_label.py), with any timm classifier.

    python ToE/lvvit/generate_label.py DATA LABELS --model dm_nfnet_f6 --img-size 576 --pretrained
    python ToE/lvvit/generate_label.py data/demo data/demo_labels --checkpoint output/demo/checkpoint.pth

The annotator sees every training image as TokenLabeling's generate_label.py shows it: resized to
--img-size / --crop-pct (shorter side) and centre-cropped to --img-size x --img-size (--crop-pct 1.0, as
TokenLabeling's README, gives the central square), with its global pooling removed: its head is applied at
every location of the last feature map (CNNs) or to every patch token (ViTs; LV-ViT's dense auxiliary head,
as upstream), giving per-location logits [K, h, w]. The top-5 logits and their class indices are saved as a
[2, 5, h, w] float16 tensor at LABELS/<class>/<image>.pt. Images that already have a label file are
skipped, so an interrupted run continues where it stopped; files are written atomically. LABELS records
its annotator and images (``token_labels.json``, see :mod:`toe.data.label_record`): continuing with
another annotator or other images is refused, and one process at a time writes it (a folder lock).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import timm
import torch
from timm.data import create_transform, resolve_data_config
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.datasets import image_folder
from ..data.guard import READ_ERRORS, CorruptImageError
from ..data.label_record import check_same_data, data_identity, read_record, write_record
from ..data.token_label import LABEL_SUFFIX, TOPK, label_file
from ..engine import Precision, load_weights
from ..engine.checkpoint import as_our_layout, torch_load
from ..engine.run_lock import lock_run_folder
from ..errors import UserError, state_dict_mismatch
from ..files import write_atomically
from ..flag_types import count, fraction, positive
from ..flag_types import device as device_name
from ..models import LVViT
from ..models.factory import create_model, parse_model_kwargs
from ..options import ArgumentParser, run_main
from .run_folder import make_folder

if TYPE_CHECKING:
    from ..integration import PatchEmbedding

MAX_CLASSES = 2048  # class indices are stored as float16, exact up to 2048


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="ToE/lvvit/generate_label.py",
        description="Make token-label files (top-5 per-location predictions of a classifier) for LV-ViT training.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data_dir", metavar="DIR", help="dataset root in ImageNet layout (DIR/train/<class>/<image>)")
    p.add_argument("output", metavar="LABELS", help="folder for the label files (LABELS/<class>/<image>.pt)")
    p.add_argument("--split", default="train", help="sub-folder of DIR to label")
    p.add_argument("--model", default=None, help="timm model name (default: the model saved in --checkpoint)")
    p.add_argument("--checkpoint", default="", help="annotator weights: a checkpoint of this project or a state_dict")
    p.add_argument("--pretrained", action="store_true", help="use timm's pretrained weights of --model (downloads)")
    p.add_argument(
        "--img-size", type=positive, default=None, help="annotator input size (default: the checkpoint's/model's)"
    )
    p.add_argument(
        "--crop-pct",
        type=fraction,
        default=None,
        help="centre-crop ratio: images are resized to img-size / crop-pct, then centre-cropped (default: the "
        "annotator's own, as upstream; TokenLabeling's README uses 1.0, the central square)",
    )
    p.add_argument(
        "--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="extra arguments for timm.create_model"
    )
    p.add_argument("-b", "--batch-size", type=positive, default=64)
    p.add_argument("-j", "--workers", type=count, default=4, help="data loading processes")
    p.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA (as upstream; the CPU stays fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Label every image of DIR/--split that has no label file yet; returns the number labelled."""
    args = build_parser().parse_args(argv)
    if bool(args.checkpoint) == args.pretrained:
        raise UserError("give the annotator's weights: --checkpoint FILE or --pretrained (one of them)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} was asked for but this machine has no CUDA device; use --device cpu")
    folder, output = Path(args.data_dir) / args.split, Path(args.output)
    check_label_folder(output, Path(args.data_dir))
    images, num_classes = image_folder(folder, None)
    if num_classes > MAX_CLASSES:
        raise UserError(f"{folder} has {num_classes} classes; label files store class indices below {MAX_CLASSES}")
    make_folder(output, "LABELS")
    lock_run_folder(output, "LABELS")
    model, size, annotator = build_annotator(args, num_classes)
    data = data_identity(images)
    keep_one_annotator(output, {"annotator": annotator, "weights_source": args.checkpoint or None, "data": data})
    todo = [(path, label_file(output, folder, path)) for path, _ in images.samples]
    todo = [(path, target) for path, target in todo if not target.is_file()]
    device = torch.device(args.device)
    model.to(device).eval()
    config = resolve_data_config({}, model=model)
    transform = create_transform(
        size,
        is_training=False,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=annotator["crop_pct"],
    )
    loader = DataLoader(
        _Images([path for path, _ in todo], images.loader, transform),
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    precision = Precision.from_flag(device, "auto", enabled=args.amp)
    print(f"{len(images.samples) - len(todo)} of {len(images.samples)} images in {folder} already have label files")
    shape = None
    with tqdm(total=len(todo), desc="labelling", unit="img", disable=args.no_progress) as bar:
        for batch, indices in loader:
            with torch.no_grad(), precision.autocast():
                logits = dense_logits(model, batch.to(device, non_blocking=True))
            scores, classes = logits.float().topk(TOPK, dim=1)
            maps = torch.stack((scores, classes.float()), dim=1).half().cpu()  # [B, 2, 5, h, w]
            shape = list(maps.shape[1:])
            for label_map, index in zip(maps, indices.tolist()):
                _save_atomic(label_map.clone(), todo[index][1])
            bar.update(len(indices))
    if todo:
        print(f"wrote {len(todo)} label files {shape} to {output} ({model.__class__.__name__} at {size}x{size} px)")
    return len(todo)


def check_label_folder(output: Path, data_dir: Path) -> None:
    """LABELS must be a folder (or not exist yet) outside the data set it labels."""
    if output.exists() and not output.is_dir():
        raise UserError(f"LABELS {output} is a file, not a folder")
    if output.resolve().is_relative_to(data_dir.resolve()):
        raise UserError(
            f"LABELS {output} lies inside the data folder {data_dir}: its files would mix with the images "
            "(a class folder of label files); choose a folder outside it"
        )


def keep_one_annotator(output: Path, record: dict) -> None:
    """Refuse to add labels of another annotator, or for other images, to a folder that has some; record
    who makes them (see :mod:`toe.data.label_record`)."""
    recorded = read_record(output)
    if recorded is not None:
        if recorded.get("annotator") != record["annotator"]:
            raise UserError(
                f"LABELS {output} holds labels of another annotator ({_describe(recorded)}; now {_describe(record)}); "
                "label into a new folder, or use the recorded annotator"
            )
        check_same_data(recorded["data"], record["data"], f"LABELS {output}")
    elif any(output.rglob(f"*{LABEL_SUFFIX}")):
        print(f"note: {output} holds label files without a record of their annotator; recording this one")
    write_record(output, record)


def _describe(record: dict) -> str:
    annotator = record.get("annotator")
    if not isinstance(annotator, dict):
        return "annotator not recorded"
    kwargs = " ".join(f"{k}={v}" for k, v in (annotator.get("model_kwargs") or {}).items())
    source = f" ({record['weights_source']})" if record.get("weights_source") else ""
    return (
        f"{annotator.get('model')}{f' ({kwargs})' if kwargs else ''} at {annotator.get('img_size')} px, "
        f"crop {annotator.get('crop_pct')}, weights {annotator.get('weights')}{source}"
    )


def weights_identity(args: argparse.Namespace) -> str:
    """The annotator's weights: timm's pretrained ones, a URL, or a file named by its size and a hash of
    its first and last MiB (a moved file stays the same annotator, a retrained one does not)."""
    if args.pretrained:
        return "timm pretrained"
    if args.checkpoint.startswith(("https://", "http://")):
        return args.checkpoint
    path = Path(args.checkpoint)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return f"a file of {size} bytes, sha256 of its ends {digest.hexdigest()[:16]}"


def build_annotator(args: argparse.Namespace, num_classes: int) -> tuple[nn.Module, int, dict]:
    """The annotator (weights loaded), its input size and its identity (model, size, kwargs, weights, the
    centre-crop ratio of its view).

    With a checkpoint of this project, the model name, input size, patch size and --model-kwargs saved in
    it are used unless given on the command line.
    """
    remote = args.checkpoint.startswith(("https://", "http://"))
    if args.checkpoint and not remote and not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint {args.checkpoint}: no such file")
    saved = _saved_args(args.checkpoint) if args.checkpoint and not remote else {}
    name = args.model or saved.get("model")
    if not name:
        raise UserError(f"--checkpoint {args.checkpoint} does not name its model: add --model")
    kwargs = {}
    if name == saved.get("model"):
        kwargs.update(parse_model_kwargs(saved.get("model_kwargs") or []))
        if saved.get("patch_size"):
            kwargs["patch_size"] = saved["patch_size"]
    kwargs.update(parse_model_kwargs(args.model_kwargs))
    size = args.img_size or (saved.get("input_size") or saved.get("img_size") if name == saved.get("model") else None)
    if args.pretrained:
        if not timm.is_model(name):
            raise UserError(f"--model {name} is not a timm model name")
        model = _create(lambda **kw: timm.create_model(name, pretrained=True, **kw), size, kwargs)
        if model.num_classes != num_classes:
            raise UserError(
                f"--model {name} predicts {model.num_classes} classes but {args.data_dir} has {num_classes} "
                "class folders; the label files must use the training classes"
            )
    else:
        model = _create(lambda **kw: create_model(name, num_classes, **kw), size, kwargs)
        state = load_weights(args.checkpoint, "--checkpoint")
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise UserError(
                f"--checkpoint {args.checkpoint} does not fit --model {name} with {num_classes} classes "
                f"({state_dict_mismatch(error)})"
            ) from None
    config = resolve_data_config({}, model=model)
    size = int(size or config["input_size"][-1])
    identity = {"model": name, "img_size": size, "model_kwargs": kwargs, "weights": weights_identity(args)}
    identity["crop_pct"] = args.crop_pct or config["crop_pct"]
    return model, size, json.loads(json.dumps(identity, default=str))


class _TimmClassifier(Protocol):
    """The two halves of a timm classifier's forward."""

    def forward_features(self, images: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, features: torch.Tensor) -> torch.Tensor: ...


def dense_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Per-location logits [B, K, h, w] of a timm classifier with its global pooling removed.

    LV-ViT's dense auxiliary head classifies its patch tokens (TokenLabeling's choice). Otherwise the model's
    own ``forward_head`` classifies every location: a CNN's feature map [B, C, h, w] becomes B*h*w maps of
    1 x 1 (pooling one cell is the identity); a ViT's patch tokens [B, h*w, C] become B*h*w sequences that
    hold the token at every position (prefix ones included), so token, average or attention pooling all
    return the token itself.
    """
    if isinstance(model, LVViT):
        h, w = model.patch_embed.grid_size
        logits = model.aux_head(model.forward_tokens(images)[:, model.num_prefix_tokens :])
        return logits.transpose(1, 2).reshape(images.shape[0], -1, h, w)
    classifier = cast(_TimmClassifier, model)
    features = classifier.forward_features(images)
    batch = features.shape[0]
    if features.dim() == 4:
        channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
        cells = features if channels_last else features.permute(0, 2, 3, 1)
        _, h, w, channels = cells.shape
        cells = cells.reshape(batch * h * w, 1, 1, channels)
        logits = classifier.forward_head(cells if channels_last else cells.permute(0, 3, 1, 2))
    elif features.dim() == 3 and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):
        prefix = cast(int, model.num_prefix_tokens)
        h, w = cast("PatchEmbedding", model.patch_embed).grid_size
        patches = features[:, prefix:]
        if patches.shape[1] != h * w:
            raise UserError(f"{type(model).__name__}: {patches.shape[1]} patch tokens do not fill its {h}x{w} grid")
        cells = patches.reshape(batch * h * w, 1, -1).expand(-1, prefix + 1, -1)
        logits = classifier.forward_head(cells)
    else:
        raise UserError(
            f"{type(model).__name__} gives features of shape {list(features.shape)}; per-location labels need a "
            "CNN feature map [B, C, H, W] or ViT tokens [B, N, C]"
        )
    return logits.reshape(batch, h, w, -1).permute(0, 3, 1, 2)


class _Images(Dataset):
    """The images to label: item i -> (image tensor, i)."""

    def __init__(self, paths: list[str], loader, transform) -> None:
        self.paths, self.loader, self.transform = paths, loader, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            image = self.loader(self.paths[index])
        except READ_ERRORS as error:
            raise CorruptImageError(
                f"cannot read image {self.paths[index]} ({type(error).__name__}: {error}); replace or delete it"
            ) from None
        return self.transform(image), index


def _create(build, size: int | None, kwargs: dict) -> nn.Module:
    """Build with ``img_size=size`` when the model takes it (ViTs), else without (CNNs take any size)."""
    if size is None:
        return build(**kwargs)
    try:
        return build(img_size=size, **kwargs)
    except (TypeError, UserError) as error:
        if "unexpected keyword argument 'img_size'" not in str(error):
            raise
        return build(**kwargs)


def _saved_args(checkpoint: str) -> dict:
    """The flags saved in a checkpoint file of this project (empty for a bare state_dict)."""
    try:
        state = as_our_layout(torch_load(checkpoint, mmap=True))
    except Exception:
        return {}  # load_weights reports unreadable files
    saved = state.get("args") if state is not None else None
    return saved if isinstance(saved, dict) else {}


def _save_atomic(tensor: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temp: torch.save(tensor, temp))


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
