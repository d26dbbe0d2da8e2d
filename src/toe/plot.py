"""Training curves of one or more runs, from their log.txt, overlaid in one picture: the ``toe plot`` command.

Panels, all per epoch: top-1 of the model (solid) and of its EMA (dashed), train loss, learning rate,
tokens fed to blocks 1.. (prefix + kept patches), cumulative train compute time (data loading
excluded); and top-1 against that compute time, which shows what ToE buys.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .engine.logger import read_epoch_records
from .errors import UserError
from .figures import palette, save_figure

RUN_COLOURS = palette("tab10")


def load_runs(output_dirs: list[str | Path]) -> list[tuple[str, list[dict]]]:
    """(label, epoch records) of every run folder; the label is the folder's name (its path when names repeat)."""
    folders = [Path(d) for d in output_dirs]
    names = [f.resolve().name for f in folders]
    runs = []
    for folder, name in zip(folders, names):
        records = read_epoch_records(folder)
        if not records:
            raise UserError(f"{folder} has no log.txt with epoch records (is it a training output folder?)")
        runs.append((name if names.count(name) == 1 else str(folder), records))
    return runs


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs [n] and values [n] of ``key`` in the records that have a number for it."""
    points = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not points:
        return np.zeros(0), np.zeros(0)
    epochs, values = zip(*points)
    return np.array(epochs), np.array(values, dtype=float)


def curves_figure(runs: list[tuple[str, list[dict]]]) -> Figure:
    """Six panels of curves (2 x 3), one colour per run, a legend naming the runs."""
    figure = Figure(figsize=(13, 7), layout="constrained")
    axes = figure.subplots(2, 3)
    (acc, loss, lr), (tokens, compute, acc_compute) = axes
    for i, (label, records) in enumerate(runs):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        acc.plot(*series(records, "test_acc1"), color=colour, marker=".", label=label)
        acc.plot(*series(records, "test_ema_acc1"), color=colour, linestyle="--", marker=".")
        loss.plot(*series(records, "train_loss"), color=colour, marker=".")
        lr.plot(*series(records, "train_lr"), color=colour, marker=".")
        tokens.plot(*series(records, "toe_tokens"), color=colour, marker=".", drawstyle="steps-mid")
        epochs, seconds = series(records, "train_compute_time")
        compute.plot(epochs, np.cumsum(seconds), color=colour, marker=".")
        total = dict(zip(epochs, np.cumsum(seconds)))
        top1 = [(total[e], a) for e, a in zip(*series(records, "test_acc1")) if e in total]
        if top1:
            acc_compute.plot(*zip(*top1), color=colour, marker=".")
    titles = (
        (acc, "top-1 % (solid: model, dashed: EMA)", "epoch"),
        (loss, "train loss", "epoch"),
        (lr, "learning rate", "epoch"),
        (tokens, "tokens fed to blocks 1..", "epoch"),
        (compute, "cumulative train compute time (s)", "epoch"),
        (acc_compute, "top-1 % (model) vs train compute", "cumulative train compute time (s)"),
    )
    for ax, title, xlabel in titles:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8)
    return figure


def plot_main(args: argparse.Namespace) -> Path:
    """The ``toe plot`` command: write the curves of ``args.output_dirs`` and return the picture's path."""
    runs = load_runs(args.output_dirs)
    out = save_figure(
        curves_figure(runs), Path(args.out) if args.out else Path(args.output_dirs[0]) / "training_curves.png"
    )
    print(f"wrote {out}: training curves of {', '.join(label for label, _ in runs)}")
    return out
