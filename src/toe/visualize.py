"""Pictures of ToE's token selection: the ``toe visualize`` command.

For every image (a row) and every stage (a column) the picture shows, over the image: the seeds
(white dots), the tokens each expansion sub-step added (a marker shape and colour per sub-step), and
for every merged patch the kept token it is averaged into (the patches of one group share a tint and
an outline, and a line joins every merged patch to its kept token). A full-token stage (keep rate 1.0)
shows the plain patch grid. For the variants without merging (``--token-reduction toe-drop`` and
``random``) the discarded patches are darkened instead; ``random`` marks its random subset (one draw).

The selection is TokenSelect's own (:meth:`toe.TokenSelect.assignment`, the selection a training
forward makes) on the model's block-0 output. The model runs in eval mode, so dropout and drop-path
add no noise and batch norms (LV-ViT's stem) use their running statistics: the picture is what a
training step without those would select.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.typing import ColorType
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import UserError
from .figures import check_output, palette, save_figure
from .integration import PatchEmbedding, apply_toe
from .models.factory import check_input_size
from .options import token_select_from_args
from .saved_run import TOE_FLAGS, build_model, model_from_checkpoint, toe_namespace, trained_with_toe
from .token_select import TokenSelect

DEFAULT_MODEL = "deit_small_patch16_224"
PANEL_INCHES = 2.6  # width and height of one image panel
LEGEND_INCHES = 1.0  # room for the legend under the grid
STEP_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "p", "h", "<", ">")  # seeds, sub-step 1, 2, ...


GROUP_COLOURS = palette("tab20")
GROUP_ALPHA = 0.35
DROPPED_ALPHA = 0.6  # darkening of discarded patches (toe-drop, random)
STEP_COLOURS: tuple[ColorType, ...] = ("white",) + palette("Set1")


@dataclass(frozen=True)
class StageSelection:
    """ToE's selection for one image in one stage.

    Attributes:
        stage: the stage (1, 2, ...).
        kept: [M] kept patch positions (0..P-1) in output order: seeds, then each sub-step's tokens in
            the order they were added; all P positions in raster order in a full-token stage.
        slot: [P] the index into ``kept`` of the token every patch is averaged into (its own if kept),
            -1 for a discarded patch (the variants without merging).
        step_sizes: number of seeds, then the size of every sub-step run (summing to M); () when the
            stage is full-token.
        step_labels: a name for each entry of ``step_sizes``.
    """

    stage: int
    kept: torch.Tensor
    slot: torch.Tensor
    step_sizes: tuple[int, ...]
    step_labels: tuple[str, ...]

    @property
    def full_token(self) -> bool:
        return not self.step_sizes

    @property
    def merged(self) -> bool:
        """Whether the patches left out are merged into kept tokens (ToE) rather than discarded."""
        return bool((self.slot >= 0).all())

    def steps(self) -> torch.Tensor:
        """[M] the step that chose every kept token: 0 = seed, k = k-th sub-step."""
        return torch.repeat_interleave(torch.arange(len(self.step_sizes)), torch.tensor(self.step_sizes))


def block0_tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The output of ``model.blocks[0]`` [B, prefix + P, C] for ``images`` [B, 3, H, W] (eval mode, no grad).

    The output is read by a hook that runs before ToE's own hook, so it is block 0's full output
    whether or not ToE reduces tokens.
    """
    captured = []
    blocks = cast(nn.Sequential, model.blocks)
    handle = blocks[0].register_forward_hook(lambda module, args, out: captured.append(out), prepend=True)
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
        model.train(training)
    return captured[0]


def stage_selections(
    token_select: TokenSelect, tokens: torch.Tensor, num_prefix_tokens: int, stages: list[int]
) -> list[list[StageSelection]]:
    """ToE's selection of every image's ``tokens`` [B, prefix + P, C] in each of ``stages``: [image][stage].

    ``token_select`` itself is left as it is (a copy is moved through the stages).
    """
    selector = copy.deepcopy(token_select)
    schedule = selector.schedule
    num_patches = tokens.shape[1] - num_prefix_tokens
    counts = schedule.token_counts(num_patches)
    per_image: list[list[StageSelection]] = [[] for _ in range(tokens.shape[0])]
    for stage in stages:
        selector.update_current_stage(schedule.expansion_step[stage - 1])
        result = selector.assignment(tokens, num_prefix_tokens)
        if result is None:
            everything = torch.arange(num_patches)
            for row in per_image:
                row.append(StageSelection(stage, everything, everything, (), ()))
            continue
        kept, slot = result
        sizes, labels = [counts.seeds], ["seeds"]
        for s in range(stage):
            for k, size in enumerate(counts.substeps[s]):
                if size > 0:
                    sizes.append(size)
                    labels.append(f"stage {s + 1}, sub-step {k + 1}")
        if selector.reduction == "random":
            sizes, labels = [kept.shape[1]], ["random subset"]
        for b, row in enumerate(per_image):
            row.append(StageSelection(stage, kept[b].cpu(), slot[b].cpu(), tuple(sizes), tuple(labels)))
    return per_image


def draw_selection(ax: Axes, image: np.ndarray, selection: StageSelection, grid: tuple[int, int]) -> None:
    """Draw ``selection`` over ``image`` [H, W, 3] on ``ax``; ``grid`` = (rows, columns) of patches."""
    rows, cols = grid
    ax.imshow(image, extent=(0, cols, rows, 0), interpolation="nearest")
    ax.set(xlim=(0, cols), ylim=(rows, 0), xticks=[], yticks=[])
    if selection.full_token:
        lines = [[(c, 0), (c, rows)] for c in range(1, cols)] + [[(0, r), (cols, r)] for r in range(1, rows)]
        ax.add_collection(LineCollection(lines, colors="white", linewidths=0.6, alpha=0.7))
        return
    slot = selection.slot.view(rows, cols).numpy()
    centres = np.stack([np.arange(rows * cols) % cols + 0.5, np.arange(rows * cols) // cols + 0.5], axis=1)
    kept = selection.kept.numpy()
    if selection.merged:
        _draw_merge_groups(ax, slot, kept, centres)
    else:
        shade = np.zeros((rows, cols, 4))
        shade[..., 3] = np.where(slot < 0, DROPPED_ALPHA, 0.0)
        ax.imshow(shade, extent=(0, cols, rows, 0), interpolation="nearest")
    size = (0.4 * PANEL_INCHES * 72 / max(rows, cols)) ** 2  # marker area in points^2: 0.4 patch wide
    steps = selection.steps().numpy()
    for k in range(len(selection.step_sizes)):
        at = centres[kept[steps == k]]
        marker, colour = _step_marker(k)
        ax.scatter(at[:, 0], at[:, 1], s=size, marker=marker, c=[colour], edgecolors="black", linewidths=0.8, zorder=3)


def _draw_merge_groups(ax: Axes, slot: np.ndarray, kept: np.ndarray, centres: np.ndarray) -> None:
    """Tint and outline every merge group (``slot`` [rows, cols]) and link merged patches to their token."""
    rows, cols = slot.shape
    tint = np.array([GROUP_COLOURS[j % len(GROUP_COLOURS)] for j in slot.reshape(-1)]).reshape(rows, cols, 3)
    ax.imshow(np.dstack([tint, np.full((rows, cols), GROUP_ALPHA)]), extent=(0, cols, rows, 0), interpolation="nearest")
    # outlines between neighbouring patches of different groups
    edges = [[(c + 1, r), (c + 1, r + 1)] for r, c in zip(*np.nonzero(slot[:, 1:] != slot[:, :-1]))]
    edges += [[(c, r + 1), (c + 1, r + 1)] for r, c in zip(*np.nonzero(slot[1:, :] != slot[:-1, :]))]
    ax.add_collection(LineCollection(edges, colors="white", linewidths=1.4))
    owner = kept[slot.reshape(-1)]  # the kept patch every patch is averaged into
    merged = np.nonzero(owner != np.arange(rows * cols))[0]
    links = np.stack([centres[merged], centres[owner[merged]]], axis=1)
    # an (M, 2, 2) array is a sequence of segments, but not a typing.Sequence, which the stub asks for
    ax.add_collection(LineCollection(links, colors="black", linewidths=0.8, alpha=0.6))  # type: ignore[arg-type]


def _step_marker(k: int) -> tuple[str, ColorType]:
    """Marker shape and colour of the tokens chosen by step ``k`` (0 = seeds)."""
    return STEP_MARKERS[k % len(STEP_MARKERS)], STEP_COLOURS[k % len(STEP_COLOURS)]


def selection_figure(
    images: list[np.ndarray], names: list[str], selections: list[list[StageSelection]], grid: tuple[int, int]
) -> Figure:
    """One panel per image (rows) and stage (columns), with a shared legend underneath."""
    rows, cols = len(images), len(selections[0])
    figure = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + LEGEND_INCHES), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    num_patches = grid[0] * grid[1]
    for r, (image, name, row) in enumerate(zip(images, names, selections)):
        for c, selection in enumerate(row):
            ax = axes[r, c]
            draw_selection(ax, image, selection, grid)
            if r == 0:
                ax.set_title(_stage_title(selection, num_patches), fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    widest = max((s for row in selections for s in row), key=lambda s: len(s.step_sizes))
    if widest.full_token:
        return figure
    handles: list[Artist] = []
    for k, label in enumerate(widest.step_labels):
        marker, colour = _step_marker(k)
        handles.append(
            Line2D([], [], linestyle="", marker=marker, markerfacecolor=colour, markeredgecolor="black", label=label)
        )
    if widest.merged:
        handles += [
            Line2D([], [], color="black", alpha=0.6, linewidth=0.8, label="merged patch -> its kept token"),
            Patch(facecolor=GROUP_COLOURS[0], alpha=GROUP_ALPHA, edgecolor="white", label="a merge group"),
        ]
    else:
        handles.append(Patch(facecolor="black", alpha=DROPPED_ALPHA, label="discarded patch"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    return figure


def _stage_title(selection: StageSelection, num_patches: int) -> str:
    if selection.full_token:
        return f"stage {selection.stage}: all {num_patches} patch tokens\n(ToE off)"
    sizes = selection.step_sizes
    if selection.step_labels == ("random subset",):
        how = "at random"
    else:
        how = f"{sizes[0]} seeds + " + " + ".join(str(m) for m in sizes[1:])
    return f"stage {selection.stage}: {sum(sizes)} of {num_patches} patch tokens\n{how}"


def load_image(path: Path, size: tuple[int, int], flag: str = "--image") -> tuple[np.ndarray, str | None]:
    """The image at ``path`` as RGB uint8 [H, W, 3] with (H, W) = ``size``, and a note if it was resized."""
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # PIL: UnidentifiedImageError, truncated files, ...
        raise UserError(f"{flag} {path} is not a readable image ({type(error).__name__}: {error})") from None
    height, width = size
    if image.size == (width, height):
        return np.asarray(image), None
    note = f"{path} is {image.size[0]}x{image.size[1]} pixels; resized to {width}x{height}, the model's input size"
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC)), note


def dataset_images(folder: Path, count: int) -> list[Path]:
    """Up to ``count`` images of a dataset folder, taking one class after the other (ImageNet layout:
    val/<class>/..., else train/<class>/..., else <class>/... or the images in ``folder`` itself)."""
    if not folder.is_dir():
        raise UserError(f"--data-path {folder} does not exist")
    root = next((folder / split for split in ("val", "train") if (folder / split).is_dir()), folder)
    classes = sorted(p for p in root.iterdir() if p.is_dir()) or [root]
    per_class = [sorted(p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS) for c in classes]
    picks = [images[i] for i in range(max(map(len, per_class))) for images in per_class if i < len(images)]
    if not picks:
        raise UserError(f"--data-path {folder} holds no images (expected {root}/<class>/<image>)")
    return picks[:count]


def to_model_input(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 images [H, W, 3] -> a batch [B, 3, H, W] normalised like the recipes' inputs (ImageNet mean, std)."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def load_model(args: argparse.Namespace) -> tuple[nn.Module, dict, str]:
    """The model to look at, the flags it was built from and a description: from --checkpoint (built from the
    flags it records, or from --model ... for a weights-only file), else a freshly initialised --model."""
    given = {
        "model": args.model,
        "input_size": args.input_size,
        "patch_size": args.patch_size,
        "model_kwargs": args.model_kwargs or [],
    }
    if args.checkpoint:
        named = given if any(given.values()) else None
        model, recorded = model_from_checkpoint(args.checkpoint, args.ema, model_args=named)
        return model, recorded, f"{args.checkpoint}{' (EMA weights)' if args.ema else ''}"
    if args.ema:
        raise UserError("--ema needs --checkpoint")
    recorded = {**given, "model": args.model or DEFAULT_MODEL}
    torch.manual_seed(args.seed)
    model = build_model(recorded)
    if args.input_size:
        check_input_size(model, args.input_size)
    return model, recorded, f"a freshly initialised {recorded['model']} (seed {args.seed})"


MAX_IMAGES = 64  # rows of one picture


def visualize_main(args: argparse.Namespace) -> Path:
    """The ``toe visualize`` command: write the selection picture and return its path."""
    if args.num_images > MAX_IMAGES:
        raise UserError(f"--num-images {args.num_images}: the picture has a row per image; draw at most {MAX_IMAGES}")
    default_folder = Path(args.checkpoint).parent if args.checkpoint else Path(".")
    out = check_output(Path(args.out) if args.out else default_folder / "toe_selection.png")
    model, recorded, source = load_model(args)
    if args.checkpoint and not trained_with_toe(recorded):
        given = [f"--{k.replace('_', '-')}" for k in TOE_FLAGS if getattr(args, k, None) is not None]
        print(
            f"note: {args.checkpoint} was trained without ToE; the picture shows what ToE would select with "
            + (
                " ".join(given) + " (and the paper's DeiT settings for the rest)"
                if given
                else "the paper's DeiT settings"
            )
        )
    try:
        apply_toe(model, token_select_from_args(toe_namespace(recorded, args)))
    except (TypeError, ValueError) as error:
        raise UserError(f"--model {recorded['model']}: {error}") from None
    selector = cast(TokenSelect, model.token_select)  # apply_toe attached it
    schedule = selector.schedule
    stages = args.stage or list(range(1, schedule.num_stages + 1))
    for stage in stages:
        if not 1 <= stage <= schedule.num_stages:
            raise UserError(
                f"--stage {stage} does not exist: the schedule (--expansion-step "
                f"{' '.join(map(str, schedule.expansion_step))}) has stages 1-{schedule.num_stages}"
            )
    paths = [(Path(p), "--image") for p in args.image]
    if args.data_path:
        paths += [(p, "--data-path") for p in dataset_images(Path(args.data_path), args.num_images)]
    if not paths:
        raise UserError("give --image FILE or --data-path FOLDER")
    patch_embed = cast(PatchEmbedding, model.patch_embed)
    size = patch_embed.img_size
    pictures = []
    for path, flag in paths:
        picture, note = load_image(path, size, flag)
        if note:
            print(f"note: {note}")
        pictures.append(picture)
    tokens = block0_tokens(model, to_model_input(pictures))
    selections = stage_selections(selector, tokens, cast(int, model.num_prefix_tokens), stages)
    names = [path.name if flag == "--image" else f"{path.parent.name}/{path.name}" for path, flag in paths]
    figure = selection_figure(pictures, names, selections, patch_embed.grid_size)
    out = save_figure(figure, out)
    shown = ", ".join(map(str, stages))
    reduction = selector.reduction
    print(
        f"wrote {out}: the selection of token reduction {reduction} in stage(s) {shown} of {len(pictures)} "
        f"image(s), {source}"
    )
    return out
