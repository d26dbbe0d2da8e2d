"""Summaries of a finished (or running) training run, from its log.txt: the `toe report` command.

Next to the measured speedup of every stage (its train compute time per epoch against the full-token
stage's) the table gives the analytic one: forward multiply-adds (:mod:`toe.flops`) of the model the
run's recorded flags describe (args.json, or args.yaml, in the run folder), built on the meta device.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from .engine.logger import read_epoch_records
from .errors import UserError
from .flops import ViTShape, at_tokens, forward_macs, kept_patches, vit_shape, yolos_shape
from .saved_run import build_model, read_run_args
from .schedule import REDUCTIONS

REQUIRED_KEYS = ("epoch", "train_compute_time", "train_images_per_sec", "epoch_time")  # in every record


@dataclass(frozen=True)
class StageRow:
    """One ToE stage of a run (at one input size) as measured."""

    stage: int | None  # None: a run without ToE
    input_size: int | None  # None: not recorded (the recipes with a single input size)
    first_epoch: int
    last_epoch: int
    tokens: float | None  # the logged sequence length: an epoch's mean when the input size changes per batch (YOLOS)
    full_tokens: float | None  # the sequence length without ToE, None in logs that did not record it
    compute_time: float  # median train compute seconds per epoch (data loading excluded)
    images_per_sec: float  # median
    memory_mb: float | None = None  # the largest logged train_memory_mb (None in logs that did not record it)

    @property
    def is_full_token(self) -> bool:
        return self.tokens is not None and self.tokens == self.full_tokens


def stage_rows(records: list[dict]) -> list[StageRow]:
    """Group epoch records by (input size, ToE stage), in order of appearance."""
    groups: dict[tuple[int | None, int | None], list[dict]] = {}  # by (input size, stage)
    for record in records:
        groups.setdefault((record.get("input_size"), record.get("toe_stage")), []).append(record)
    rows = []
    for (input_size, stage), group in groups.items():
        rows.append(
            StageRow(
                stage=stage,
                input_size=input_size,
                first_epoch=min(r["epoch"] for r in group),
                last_epoch=max(r["epoch"] for r in group),
                tokens=group[-1].get("toe_tokens"),
                full_tokens=group[-1].get("full_tokens"),
                compute_time=statistics.median(r["train_compute_time"] for r in group),
                images_per_sec=statistics.median(r["train_images_per_sec"] for r in group),
                memory_mb=max((r["train_memory_mb"] for r in group if r.get("train_memory_mb")), default=None),
            )
        )
    return rows


def full_token_row(rows: list[StageRow], input_size: int | None) -> StageRow | None:
    """The reference of the speedups at ``input_size``: its last full-token stage, if it has one and a
    stage with fewer tokens. Logs without ``full_tokens`` take the stage with the most tokens."""
    same_size = [row for row in rows if row.input_size == input_size and row.tokens is not None]
    if all(row.full_tokens is None for row in same_size):
        most = max((cast(float, row.tokens) for row in same_size), default=None)  # same_size: rows with tokens
        full = [row for row in same_size if row.tokens == most]
    else:
        full = [row for row in same_size if row.is_full_token]
    return full[-1] if full and len(full) < len(same_size) else None


def stage_speedups(rows: list[StageRow]) -> list[float | None]:
    """Measured speedup of every row over the full-token stage at its input size (None: no such stage)."""
    speedups = []
    for row in rows:
        reference = full_token_row(rows, row.input_size)
        speedups.append(None if reference is None else reference.compute_time / row.compute_time)
    return speedups


def token_reduction(records: list[dict], args: dict | None) -> str:
    """How the run reduced tokens: the variant recorded in its log (or flags), or full-token training."""
    if all(record.get("toe_stage") is None for record in records):
        return "full-token training (ToE off)"
    name = next((r["token_reduction"] for r in records if r.get("token_reduction")), None)
    name = name or (args or {}).get("token_reduction") or "toe"  # logs older than the variants: ToE
    return f"token reduction {REDUCTIONS.get(name, name)}"


def run_args(output_dir: Path) -> tuple[dict | None, str]:
    """The run's recorded flags, or None and the reason why there are none."""
    args = read_run_args(output_dir)
    return (args, "") if args is not None else (None, f"no args.json or args.yaml in {output_dir}")


def run_shape(args: dict, input_size: int | None) -> tuple[ViTShape | None, str]:
    """The cost shape of the run's model at ``input_size`` (None: the recorded one), or None and why not."""
    if input_size is not None:
        args = {**args, "input_size": input_size, "img_size": input_size}
    try:
        model = build_model(args, device="meta")
        if args.get("det_token_num"):  # a detector (YOLOS): at its position embedding's grid
            return yolos_shape(model, *args["init_pe_size"]), ""
        return vit_shape(model), ""
    except (UserError, TypeError, ValueError) as error:
        return None, f"cannot build --model {args.get('model')} from the recorded flags: {error}"


def analytic_speedup(shape: ViTShape, tokens: float | None, full_tokens: float | None = None) -> float | None:
    """Forward cost of the full-token model over its cost with ``tokens`` (prefix + kept) fed to blocks 1..;
    a model whose input size changes per batch at the patch count of ``full_tokens`` (see ``at_tokens``)."""
    if tokens is None:
        return None
    shape = at_tokens(shape, full_tokens)
    return forward_macs(shape) / forward_macs(shape, kept_patches(shape, tokens))


def whole_run_speedups(
    records: list[dict], rows: list[StageRow], shapes: dict[int | None, ViTShape | None]
) -> tuple[float | None, float | None]:
    """Measured and analytic speedup of the whole run over full-token training of the same epochs at the
    same input sizes (None: unknown).

    Measured: every epoch's full-token time (the median of the full-token stage at its input size) over
    the run's total compute time. Analytic: full-token forward cost over the cost of each epoch's tokens.
    """
    measured = analytic = None
    references = {size: full_token_row(rows, size) for size in shapes}
    if all(reference is not None for reference in references.values()):
        found = cast(dict[int | None, StageRow], references)  # every size has one (checked above)
        full_time = sum(found[r.get("input_size")].compute_time for r in records)
        measured = full_time / sum(r["train_compute_time"] for r in records)
    if all(shapes.values()) and all(r.get("toe_tokens") is not None for r in records):
        known = cast(dict[int | None, ViTShape], shapes)  # every size has one (checked above)
        epoch_shapes = [at_tokens(known[r.get("input_size")], r.get("full_tokens")) for r in records]
        full_cost = sum(forward_macs(shape) for shape in epoch_shapes)
        cost = sum(forward_macs(shape, kept_patches(shape, r["toe_tokens"])) for shape, r in zip(epoch_shapes, records))
        analytic = full_cost / cost
    return measured, analytic


def format_report(output_dir: str | Path) -> str:
    """The run's table of stages (tokens, time per epoch, measured and analytic speedup) and its top-1."""
    output_dir = Path(output_dir)
    records = read_epoch_records(output_dir)
    if not records:
        raise UserError(f"{output_dir} has no log.txt with epoch records (is it a training output folder?)")
    missing = [key for key in REQUIRED_KEYS if any(key not in record for record in records)]
    if missing:
        raise UserError(
            f"{output_dir}/log.txt lacks {', '.join(missing)} in some epoch records: it was not written by a "
            "recipe of this project"
        )
    rows = stage_rows(records)
    speedups = stage_speedups(rows)
    args, why_not = run_args(output_dir)
    sizes = list(dict.fromkeys(row.input_size for row in rows))
    shapes: dict[int | None, ViTShape | None] = {}
    for size in sizes:
        shapes[size], why_not = run_shape(args, size) if args is not None else (None, why_not)
    show_size = len(sizes) > 1
    size_head = f"{'input':>5}  " if show_size else ""
    lines = [
        f"run {output_dir}: {len(records)} epochs, {token_reduction(records, args)}",
        "",
        " " * len(size_head) + f"{'':>5}  {'':>9}  {'':>14}  {'':>15}  {'':>9}  {'speedup vs full-token':>21}",
        f"{size_head}{'stage':>5}  {'epochs':>9}  {'patch tokens':>14}  {'compute s/epoch':>15}  {'images/s':>9}  "
        f"{'measured':>10}  {'analytic':>9}",
    ]
    for row, measured in zip(rows, speedups):
        shape = shapes[row.input_size]
        analytic = None if shape is None else analytic_speedup(shape, row.tokens, row.full_tokens)
        size_cell = f"{row.input_size if row.input_size is not None else '-':>5}  " if show_size else ""
        lines.append(
            f"{size_cell}{'-' if row.stage is None else row.stage:>5}  {f'{row.first_epoch}-{row.last_epoch}':>9}  "
            f"{_patch_tokens(row.tokens, row.full_tokens, shape):>14}  {row.compute_time:>15.2f}  "
            f"{row.images_per_sec:>9.1f}  {_times(measured):>10}  {_times(analytic):>9}"
        )
    lines.append("")
    if all(record.get("toe_stage") is None for record in records):
        lines.append("whole run: full-token training (ToE off)")
    else:
        measured, analytic = whole_run_speedups(records, rows, shapes)
        how = (
            f"the full-token stage's time per epoch x {len(records)} epochs"
            if measured is not None
            else "no full-token stage to compare with yet"
        )
        lines.append(
            f"whole run vs full-token training: {_times(measured)} measured ({how}), {_times(analytic)} analytic"
        )
    if show_size:
        lines.append("speedups compare stages at the same input size")
    if not all(shapes.values()):
        lines.append("patch tokens: the model is unknown, so the counts include its prefix (class) tokens")
    lines.append(
        "measured: train compute time per epoch (data loading excluded); analytic: forward multiply-adds "
        + ("of the model in the run's recorded flags (toe flops)" if all(shapes.values()) else f"unknown ({why_not})")
    )
    last = records[-1]
    lines.append("")
    for key, name in (("test_acc1", "model"), ("test_ema_acc1", "EMA")):
        if key in last:
            lines.append(f"top-1 ({name}): final {last[key]:.2f}%, best {last.get(f'best_{key}', last[key]):.2f}%")
    if "test_ap" in last:
        lines.append(
            f"COCO box AP: final {last['test_ap']:.1f} (AP50 {last['test_ap50']:.1f}, AP75 {last['test_ap75']:.1f}), "
            f"best {last.get('best_test_ap', last['test_ap']):.1f}"
        )
    total = sum(r["train_compute_time"] for r in records)
    lines.append(
        f"train compute time: {total:.1f}s over {len(records)} epochs "
        f"({sum(r['epoch_time'] for r in records):.1f}s wall)"
    )
    memories = [(row.stage, row.memory_mb) for row in rows if row.memory_mb is not None]
    if memories:
        per_stage = ", ".join(f"{'-' if stage is None else stage}: {mb:.0f}" for stage, mb in memories)
        lines.append(
            f"training memory per step, MiB by stage ({per_stage}): the CUDA peak, or on the CPU the "
            "activations saved for backward"
        )
    outputs = [
        name
        for name in (
            "checkpoint.pth",
            "best_checkpoint.pth",
            "best_ema_checkpoint.pth",
            "ema_best_checkpoint.pth",  # the ToE reference repo's name
            "log.txt",
            "training_curves.png",
            "toe_selection.png",
        )
        if (output_dir / name).exists()
    ]
    if (output_dir / "tensorboard").is_dir():
        outputs.append("tensorboard/ (tensorboard --logdir " + str(output_dir / "tensorboard") + ")")
    lines.append(f"outputs in {output_dir}: " + ", ".join(outputs))
    return "\n".join(lines)


def format_side_by_side(output_dirs: list[str | Path]) -> str:
    """One line per run: the final accuracy (classification: final and best top-1; detection: final COCO
    AP50 and AP, in percent), train compute time (and its ratio to the first run's), the largest training
    memory of a step and its mean over the epochs (the CUDA peak, or on the CPU the activations saved for
    backward; ``-`` where the log did not record it)."""
    runs = []
    for folder in output_dirs:
        records = read_epoch_records(Path(folder))
        if not records or any("train_compute_time" not in r for r in records):
            raise UserError(f"{folder} has no log.txt of this project's recipes")
        runs.append((folder, records))
    detection = ["test_ap50" in records[-1] for _, records in runs]
    if any(detection) and not all(detection):
        raise UserError("--side-by-side compares runs of one kind: these mix detection and classification runs")
    metrics = (
        (("AP50", "test_ap50"), ("AP", "test_ap"))
        if detection[0]
        else (("top-1", "test_acc1"), ("best", "best_test_acc1"))
    )
    lines = [
        f"{'run':<28} {'ToE':>4} {metrics[0][0]:>7} {metrics[1][0]:>7} {'compute s':>10} {'speedup':>8} "
        f"{'memory MiB: peak':>16} {'mean':>6}"
    ]
    first_time = None
    for folder, records in runs:
        last = records[-1]
        compute = sum(r["train_compute_time"] for r in records)
        first_time = first_time or compute
        memory = [r["train_memory_mb"] for r in records if r.get("train_memory_mb") is not None]
        peak = f"{max(memory):.0f}" if memory else "-"
        mean = f"{sum(memory) / len(memory):.0f}" if memory else "-"
        toe = "on" if any(r.get("toe_stage") is not None for r in records) else "off"
        values = " ".join(f"{last.get(key, float('nan')):>6.2f}%" for _, key in metrics)
        lines.append(
            f"{str(folder)[-28:]:<28} {toe:>4} {values} {compute:>10.1f} {first_time / compute:>7.2f}x "
            f"{peak:>16} {mean:>6}"
        )
    return "\n".join(lines)


def _patch_tokens(tokens: float | None, full_tokens: float | None, shape: ViTShape | None) -> str:
    """'32 of 64' patch tokens fed to blocks 1.. (the log records the sequence length, prefix and YOLOS's
    [DET] tokens included; for YOLOS epoch means, e.g. '30.7 of 62.4', the shape at that patch count)."""
    if tokens is None:
        return "-"
    if shape is None:
        return f"{tokens:g}"
    shape = at_tokens(shape, full_tokens)
    return f"{round(kept_patches(shape, tokens), 1):g} of {round(shape.num_patches, 1):g}"


def _times(speedup: float | None) -> str:
    return "-" if speedup is None else f"{speedup:.2f}x"
