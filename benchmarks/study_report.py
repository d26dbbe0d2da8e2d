"""What the study (benchmarks/study.py) found, from its cells' log.txt: study.json's entries and study.md.

A cell is one ordinary DeiT run folder ``OUT/e<length>/<variant>/seed<seed>``. Everything here is
read from the cells' log.txt (one JSON record per epoch) and args.json (the model, for the analytic
cost), so the report can be written at any moment, for a finished or a partial grid.

Two compute axes:
- *measured*: train compute time, the sum of the records' ``train_compute_time`` (seconds, data
  loading excluded); noisy on a shared machine;
- *analytic*: forward multiply-adds of every epoch, from the tokens the epoch fed to blocks 1..
  (``toe_tokens``, :func:`toe.flops.forward_macs` of the model in the run's args.json) times the
  epoch's training images; exact, and the same for every variant with the same schedule.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from study_holdout import read_holdout

from toe.engine import read_epoch_records
from toe.errors import UserError
from toe.flops import ViTShape, forward_macs
from toe.report import run_args, run_shape

VARIANTS = ("baseline", "toe", "toe-drop", "random")
CELL_PATTERN = re.compile(r"e(\d+)/([a-z-]+)/seed(\d+)")
EPOCH_KEYS = ("test_acc1", "test_ema_acc1", "train_compute_time", "epoch_time", "toe_tokens")


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a schedule length (epochs), a variant and a seed."""

    length: int
    variant: str
    seed: int

    @property
    def name(self) -> str:
        """The cell's folder relative to the study's output folder, e.g. ``e36/random/seed2``."""
        return f"e{self.length}/{self.variant}/seed{self.seed}"

    def sort_key(self) -> tuple:
        """Lengths, then seeds, then variants in :data:`VARIANTS` order (the order cells are run in)."""
        rank = VARIANTS.index(self.variant) if self.variant in VARIANTS else len(VARIANTS)
        return (self.length, self.seed, rank, self.variant)


def cells_on_disk(out: Path) -> list[Cell]:
    """The cell folders under ``out`` (``e<length>/<variant>/seed<seed>`` with a known variant)."""
    cells = []
    for folder in out.glob("e*/*/seed*"):
        match = CELL_PATTERN.fullmatch(folder.relative_to(out).as_posix())
        if folder.is_dir() and match and match[2] in VARIANTS:
            cells.append(Cell(int(match[1]), match[2], int(match[3])))
    return cells


def epoch_records(folder: Path) -> list[dict]:
    """The epoch records of a cell's log.txt, in epoch order (no log: []; a damaged log: a UserError)."""
    return read_epoch_records(folder)


def cell_status(folder: Path, length: int) -> tuple[str, int]:
    """("done" | "partial" | "new" | "damaged", epochs finished): done when log.txt holds every epoch
    0..length-1; damaged when it holds a damaged or repeated record (training the cell again with
    --auto-resume rewrites the log from its checkpoint)."""
    try:
        finished = {r["epoch"] for r in epoch_records(folder)}
    except UserError:
        return "damaged", 0
    if all(epoch in finished for epoch in range(length)):
        return "done", length
    if finished or (folder / "checkpoint.pth").exists():
        return "partial", len(finished)
    return "new", 0


def describe_status(status: str, finished: int, length: int) -> str:
    """``done``, ``partial at epoch k of E``, ``new`` or why the log is damaged."""
    if status == "damaged":
        return "damaged log.txt (resumed from its checkpoint, which rewrites the log)"
    return f"partial at epoch {finished} of {length}" if status == "partial" else status


# ---------------------------------------------------------------------------------------------------------
# collecting the cells


class ShapeCache:
    """The cost shape of each cell's model (from its args.json), built once per distinct set of model flags."""

    def __init__(self) -> None:
        self._shapes: dict[str, ViTShape | None] = {}

    def __call__(self, folder: Path) -> ViTShape | None:
        args, _ = run_args(folder)
        if args is None:
            return None
        key = json.dumps({k: args.get(k) for k in ("model", "input_size", "patch_size", "model_kwargs")})
        if key not in self._shapes:
            self._shapes[key] = run_shape(args, None)[0]
        return self._shapes[key]


def epoch_macs(record: dict, shape: ViTShape | None) -> float | None:
    """Analytic forward multiply-adds of one epoch: per image at the epoch's token count x its images."""
    tokens = record.get("toe_tokens") or record.get("full_tokens")
    if shape is None or tokens is None:
        return None
    return forward_macs(shape, tokens - shape.num_prefix_tokens) * record.get("train_images", 1)


def collect_cell(out: Path, cell: Cell, shapes: ShapeCache, holdout: Path | None = None) -> dict:
    """One cell's entry of study.json: status, per-epoch records, totals over the finished epochs and, for a
    finished cell, its holdout result (on ``holdout``; None: on whatever data it names)."""
    folder = out / cell.name
    status, finished = cell_status(folder, cell.length)
    records = epoch_records(folder) if status != "damaged" else []
    shape = shapes(folder) if records else None
    epochs = []
    for record in records:
        entry = {"epoch": record["epoch"], **{key: record.get(key) for key in EPOCH_KEYS}}
        entry["forward_macs"] = epoch_macs(record, shape)
        epochs.append(entry)
    return {
        "cell": cell.name,
        "variant": cell.variant,
        "length": cell.length,
        "seed": cell.seed,
        "status": status,
        "epochs_finished": finished,
        "token_reduction": records[-1].get("token_reduction") if records else None,
        "attempts": read_attempts(folder),
        "epochs": epochs,
        "totals": totals(epochs) if epochs else None,
        "holdout": read_holdout(folder, holdout, cell.length) if status == "done" else None,
    }


def totals(epochs: list[dict]) -> dict:
    """Sums (compute, wall, analytic MACs) and final / best top-1 (model and EMA) of a cell's epochs."""
    top1 = [e["test_acc1"] for e in epochs if e["test_acc1"] is not None]
    ema = [e["test_ema_acc1"] for e in epochs if e["test_ema_acc1"] is not None]
    macs = [e["forward_macs"] for e in epochs]
    return {
        "train_compute_time": sum(e["train_compute_time"] for e in epochs),
        "wall_time": sum(e["epoch_time"] for e in epochs),
        "forward_macs": None if None in macs else sum(macs),
        "final_acc1": epochs[-1]["test_acc1"],
        "best_acc1": max(top1) if top1 else None,
        "final_ema_acc1": epochs[-1]["test_ema_acc1"],
        "best_ema_acc1": max(ema) if ema else None,
    }


ATTEMPTS_FILE = "study-attempts.jsonl"


def read_attempts(folder: Path) -> list[dict]:
    """The runner's record of every time it started the cell (date, threads, host), oldest first."""
    path = folder / ATTEMPTS_FILE
    if not path.is_file():
        return []
    attempts = []
    for line in path.read_text().splitlines():
        try:
            attempts.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return attempts


# ---------------------------------------------------------------------------------------------------------
# the table


def top1_at_compute(cumulative: list[float], top1: list[float], budget: float) -> float | None:
    """A run's top-1 at cumulative compute ``budget``: linear between the two epoch records around it.

    ``cumulative[i]`` is the compute spent up to the end of epoch i, ``top1[i]`` the top-1 measured then.
    None when ``budget`` falls before the first record or after the last (the run does not tell).
    """
    for i, spent in enumerate(cumulative):
        if budget <= spent:
            if i == 0:
                return top1[0] if budget == spent else None
            before = cumulative[i - 1]
            return top1[i - 1] + (top1[i] - top1[i - 1]) * (budget - before) / (spent - before)
    return None


def cumulative(values: list[float]) -> list[float]:
    out, total = [], 0.0
    for value in values:
        total += value
        out.append(total)
    return out


def equal_compute_top1(variant: dict, baseline: dict | None, axis: str) -> float | None:
    """The baseline's top-1 (model) when its cumulative ``axis`` ("train_compute_time" or "forward_macs")
    equalled the variant's whole run; None when unknown (no baseline, or it did not get that far)."""
    if baseline is None or not variant["totals"] or variant["totals"][axis] is None:
        return None
    epochs = [e for e in baseline["epochs"] if e["test_acc1"] is not None]
    if not epochs or any(e[axis] is None for e in epochs):
        return None
    spent = cumulative([e[axis] for e in epochs])
    return top1_at_compute(spent, [e["test_acc1"] for e in epochs], variant["totals"][axis])


@dataclass(frozen=True)
class Spread:
    """Mean and standard deviation (None with fewer than two values) over seeds."""

    mean: float
    std: float | None
    n: int

    @staticmethod
    def of(values: list[float | None]) -> Spread | None:
        values = [v for v in values if v is not None]
        if not values:
            return None
        return Spread(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def text(self, digits: int = 2, unit: str = "") -> str:
        spread = "" if self.std is None else f" ± {self.std:.{digits}f}"
        return f"{self.mean:.{digits}f}{spread}{unit}"


@dataclass
class Row:
    """One line of a table: a variant at one length, over its finished seeds."""

    length: int
    variant: str
    seeds: list[int]
    values: dict[str, Spread | None] = field(default_factory=dict)
    speedup_measured: float | None = None
    speedup_analytic: float | None = None
    paired_delta: Spread | None = None
    holdout_acc1: Spread | None = None
    holdout_ema_acc1: Spread | None = None
    holdout_delta: Spread | None = None
    equal_measured: Spread | None = None
    equal_analytic: Spread | None = None


TOTAL_COLUMNS = (
    ("final_acc1", "final top-1"),
    ("best_acc1", "best top-1"),
    ("final_ema_acc1", "final EMA top-1"),
    ("best_ema_acc1", "best EMA top-1"),
    ("train_compute_time", "train compute (s)"),
    ("wall_time", "wall (s)"),
)


def summary_rows(cells: list[dict]) -> list[Row]:
    """One :class:`Row` per (length, variant) with at least one finished cell, from study.json's cells."""
    done = [c for c in cells if c["status"] == "done"]
    by_key: dict[tuple[int, str], list[dict]] = {}
    for cell in sorted(done, key=lambda c: Cell(c["length"], c["variant"], c["seed"]).sort_key()):
        by_key.setdefault((cell["length"], cell["variant"]), []).append(cell)
    baselines = {(c["length"], c["seed"]): c for c in cells if c["variant"] == "baseline"}
    rows = []
    for (length, variant), group in by_key.items():
        row = Row(length, variant, [c["seed"] for c in group])
        for key, _ in TOTAL_COLUMNS:
            row.values[key] = Spread.of([c["totals"][key] for c in group])
        reference = by_key.get((length, "baseline"))
        if reference is not None:
            row.speedup_measured = _ratio(reference, group, "train_compute_time")
            row.speedup_analytic = _ratio(reference, group, "forward_macs")
        row.holdout_acc1 = Spread.of([_holdout(c, "test_acc1") for c in group])
        row.holdout_ema_acc1 = Spread.of([_holdout(c, "test_ema_acc1") for c in group])
        if variant != "baseline":
            pairs = [(c, baselines.get((length, c["seed"]))) for c in group]
            row.paired_delta = Spread.of([paired_delta(c, b) for c, b in pairs])
            row.holdout_delta = Spread.of([holdout_delta(c, b) for c, b in pairs])
            row.equal_measured = Spread.of([equal_compute_top1(c, b, "train_compute_time") for c, b in pairs])
            row.equal_analytic = Spread.of([equal_compute_top1(c, b, "forward_macs") for c, b in pairs])
        rows.append(row)
    return rows


def paired_delta(variant: dict, baseline: dict | None) -> float | None:
    """The variant's final top-1 minus its own seed's baseline final top-1 (None until both are done): the
    seed's data order and initialisation cancel out, so its spread is the variant's own noise."""
    if baseline is None or baseline["status"] != "done":
        return None
    return variant["totals"]["final_acc1"] - baseline["totals"]["final_acc1"]


def _holdout(cell: dict, key: str) -> float | None:
    return (cell.get("holdout") or {}).get(key)


def holdout_delta(variant: dict, baseline: dict | None) -> float | None:
    """As :func:`paired_delta`, on the holdout set (None unless both have a result on the same data)."""
    if baseline is None or not variant.get("holdout") or not baseline.get("holdout"):
        return None
    if variant["holdout"]["data"] != baseline["holdout"]["data"]:
        return None
    return variant["holdout"]["test_acc1"] - baseline["holdout"]["test_acc1"]


def _ratio(reference: list[dict], group: list[dict], key: str) -> float | None:
    """Mean ``key`` total of the reference cells over that of ``group`` (None when a total is unknown)."""
    ref = Spread.of([c["totals"][key] for c in reference])
    mine = Spread.of([c["totals"][key] for c in group])
    if ref is None or mine is None or ref.n < len(reference) or mine.n < len(group):
        return None
    return ref.mean / mine.mean


# ---------------------------------------------------------------------------------------------------------
# study.md


def _cell(spread: Spread | None, digits: int = 2) -> str:
    return "-" if spread is None else spread.text(digits)


def _equal(spread: Spread | None, row: Row) -> str:
    """An equal-compute cell of the table, saying how many seeds it is over when some have no value."""
    if spread is None or spread.n == len(row.seeds):
        return _cell(spread)
    return f"{spread.text()} ({spread.n} of {len(row.seeds)} seeds)"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(study: dict) -> str:
    """study.md: the settings, one table per length, the cells, and what is not done."""
    cells = study["cells"]
    rows = summary_rows(cells)
    grid = study["grid"]
    done = sum(c["status"] == "done" for c in cells)
    settings = study["settings"]
    lines = [
        "# ToE study: top-1 against training compute",
        "",
        f"Grid: variants {', '.join(grid['variants'])}; seeds {' '.join(map(str, grid['seeds']))}; "
        f"lengths {', '.join(f'{e} epochs' for e in grid['lengths'])}. {done} of {len(cells)} cells done.",
        f"Written {study['date']} by benchmarks/study.py at commit {study['commit'] or 'unknown'}, "
        f"torch {study['torch']}; the cells ran with {_attempts(cells)}.",
        "",
        f"Every cell: `{settings.get('script', 'ToE/deit/main.py')} {' '.join(settings['base_flags'])}"
        + (f" {' '.join(settings['pass_through'])}" if settings["pass_through"] else "")
        + " --seed S --epochs E`, data "
        f"`{settings['data']}`; ToE variants add `--toe --token-reduction V --expansion-step 0 E/3 2E/3 "
        "--keep-rate 0.5 0.75 1.0 --initialization-keep-rate 0.25 --expansion-multiple-stage 2`.",
        "",
        "How to read the tables (mean ± standard deviation over the finished seeds):",
        "- *Δ final top-1 vs same-seed baseline*: the variant's final top-1 minus the baseline's of the same seed "
        "(same initialisation and data order), so its spread is the variant's own noise, not the seeds';",
        "- *train compute*: the sum of the epochs' train compute time (data loading excluded), *wall*: the sum "
        "of the epochs' wall time;",
        "- *speedup measured*: the baseline's mean train compute over the variant's (same length); *speedup "
        "analytic*: the same ratio of forward multiply-adds from every epoch's token count (`toe flops`);",
        "- *baseline at equal compute*: the same seed's baseline top-1 (model) at the moment its cumulative "
        "compute equalled the variant's whole run, linearly interpolated between the baseline's epochs; "
        "*measured* on train compute time (noisy: timings on a shared machine), *analytic* on cumulative "
        "forward multiply-adds (exact). Compare it with the variant's final top-1: above it, the variant "
        "made better use of the same compute than full-token training stopped early. A seed whose variant took "
        "more compute than its baseline's whole run has no such point (then the column says over how many seeds).",
    ]
    holdouts = {(c["holdout"]["data"], c["holdout"]["images"]) for c in cells if c.get("holdout")}
    if holdouts:
        names = "; ".join(f"`{data}` ({images} images)" for data, images in sorted(holdouts))
        lines.append(
            f"- *holdout*: the final weights (model, EMA) evaluated once on the val/ split of {names}, images the "
            "runs never saw (`--holdout`); *Δ holdout* pairs it with the same seed's baseline as above."
        )
    header = (
        "| variant | seeds | "
        + " | ".join(name for _, name in TOTAL_COLUMNS)
        + " | Δ final top-1 vs same-seed baseline | speedup measured | speedup analytic"
        + " | baseline at equal compute: measured | analytic |"
        + (" holdout top-1 | holdout EMA top-1 | Δ holdout top-1 vs same-seed baseline |" if holdouts else "")
    )
    for length in grid["lengths"] + sorted({c["length"] for c in cells} - set(grid["lengths"])):
        lines += ["", f"## {length} epochs", ""]
        length_rows = [row for row in rows if row.length == length]
        if length_rows:
            lines += [header, "|" + "---|" * (header.count("|") - 1)]
            for row in length_rows:
                values = [_cell(row.values[key], 1 if key.endswith("time") else 2) for key, _ in TOTAL_COLUMNS]
                lines.append(
                    f"| {row.variant} | {' '.join(map(str, row.seeds))} | "
                    + " | ".join(values)
                    + f" | {_equal(row.paired_delta, row)} | {_times(row.speedup_measured)} | "
                    f"{_times(row.speedup_analytic)} | "
                    f"{_equal(row.equal_measured, row)} | {_equal(row.equal_analytic, row)} |"
                    + (
                        f" {_equal(row.holdout_acc1, row)} | {_equal(row.holdout_ema_acc1, row)} | "
                        f"{_equal(row.holdout_delta, row)} |"
                        if holdouts
                        else ""
                    )
                )
        else:
            lines.append("No cell of this length is done yet.")
        lines += ["", "Cells:", ""]
        for cell in (c for c in cells if c["length"] == length):
            status = describe_status(cell["status"], cell["epochs_finished"], length)
            t = cell["totals"]
            measured = (
                ""
                if t is None
                else f": final top-1 {t['final_acc1']:.2f}%, EMA {_percent(t['final_ema_acc1'])}, "
                f"train compute {t['train_compute_time']:.1f} s, wall {t['wall_time']:.1f} s"
            )
            if cell.get("holdout"):
                h = cell["holdout"]
                measured += f"; holdout top-1 {h['test_acc1']:.2f}%, EMA {_percent(h['test_ema_acc1'])}"
            lines.append(f"- `{cell['cell']}` {status}{measured}")
    missing = [c for c in cells if c["status"] != "done"]
    lines += [""]
    if missing:
        lines.append(
            f"Not done yet ({len(missing)} cells, left out of the tables): "
            + ", ".join(
                f"`{c['cell']}` ({describe_status(c['status'], c['epochs_finished'], c['length'])})" for c in missing
            )
            + ". Run the same command again to continue."
        )
    else:
        lines.append("All cells are done.")
    lines += ["", "Figures: study_curves.png (top-1 against cumulative compute), study_final.png (final top-1).", ""]
    return "\n".join(lines)


def _attempts(cells: list[dict]) -> str:
    """Threads per cell and cells at a time of every start of a cell, e.g. ``1 thread(s) per cell, 2 cell(s) at
    a time``."""
    attempts = [a for c in cells for a in c["attempts"]]
    if not attempts:
        return "unrecorded threads"
    threads = "/".join(map(str, sorted({a["threads"] for a in attempts})))
    parallel = "/".join(map(str, sorted({a["parallel"] for a in attempts})))
    return f"{threads} thread(s) per cell, {parallel} cell(s) at a time"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


# ---------------------------------------------------------------------------------------------------------
# writing


def collect(out: Path, cells: list[Cell], holdout: Path | None = None) -> list[dict]:
    """study.json's cell entries for ``cells``, in run order (holdout results on ``holdout``, or any)."""
    shapes = ShapeCache()
    return [collect_cell(out, cell, shapes, holdout) for cell in sorted(cells, key=Cell.sort_key)]
