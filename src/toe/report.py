"""Summaries of a finished (or running) training run, from its log.txt: the `toe report` command."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from .engine.logger import read_log
from .options import UserError


@dataclass(frozen=True)
class StageRow:
    """One ToE stage of a run as measured."""

    stage: int | None  # None: a run without ToE
    first_epoch: int
    last_epoch: int
    tokens: int | None
    compute_time: float  # median train compute seconds per epoch (data loading excluded)
    images_per_sec: float  # median


def stage_rows(records: list[dict]) -> list[StageRow]:
    """Group epoch records by ToE stage, in order of appearance."""
    groups: dict[object, list[dict]] = {}
    for record in records:
        groups.setdefault(record.get("toe_stage"), []).append(record)
    rows = []
    for stage, group in groups.items():
        rows.append(
            StageRow(
                stage=stage,
                first_epoch=min(r["epoch"] for r in group),
                last_epoch=max(r["epoch"] for r in group),
                tokens=group[-1].get("toe_tokens"),
                compute_time=statistics.median(r["train_compute_time"] for r in group),
                images_per_sec=statistics.median(r["train_images_per_sec"] for r in group),
            )
        )
    return rows


def stage_speedups(rows: list[StageRow]) -> dict[object, float | None]:
    """Measured speedup of every stage over the run's full-token stage (most tokens), if there is one."""
    full = [row for row in rows if row.tokens is not None and row.tokens == max(r.tokens or 0 for r in rows)]
    if not full or len(full) == len(rows):
        return {row.stage: None for row in rows}
    reference = full[-1].compute_time
    return {row.stage: reference / row.compute_time for row in rows}


def format_report(output_dir: str | Path) -> str:
    """The run's table of stages (tokens, time per epoch, speedup) and its final and best top-1."""
    output_dir = Path(output_dir)
    records = read_log(output_dir)
    if not records:
        raise UserError(f"{output_dir} has no log.txt with epoch records (is it a training output folder?)")
    rows = stage_rows(records)
    speedups = stage_speedups(rows)
    lines = [
        f"run {output_dir}: {len(records)} epochs",
        "",
        f"{'stage':>5}  {'epochs':>9}  {'tokens':>6}  {'compute s/epoch':>15}  {'images/s':>9}  "
        f"{'speedup vs full':>15}",
    ]
    for row in rows:
        speedup = speedups[row.stage]
        lines.append(
            f"{'-' if row.stage is None else row.stage:>5}  {f'{row.first_epoch}-{row.last_epoch}':>9}  "
            f"{row.tokens if row.tokens is not None else '-':>6}  {row.compute_time:>15.2f}  "
            f"{row.images_per_sec:>9.1f}  {'-' if speedup is None else f'{speedup:.2f}x':>15}"
        )
    last = records[-1]
    lines.append("")
    for key, name in (("test_acc1", "model"), ("test_ema_acc1", "EMA")):
        if key in last:
            lines.append(f"top-1 ({name}): final {last[key]:.2f}%, best {last.get(f'best_{key}', last[key]):.2f}%")
    total = sum(r["train_compute_time"] for r in records)
    lines.append(
        f"train compute time: {total:.1f}s over {len(records)} epochs "
        f"({sum(r['epoch_time'] for r in records):.1f}s wall)"
    )
    outputs = [
        name
        for name in ("checkpoint.pth", "best_checkpoint.pth", "best_ema_checkpoint.pth", "log.txt")
        if (output_dir / name).exists()
    ]
    if (output_dir / "tensorboard").is_dir():
        outputs.append("tensorboard/ (tensorboard --logdir " + str(output_dir / "tensorboard") + ")")
    lines.append(f"outputs in {output_dir}: " + ", ".join(outputs))
    return "\n".join(lines)
