"""A resumable accuracy-vs-compute study: token-reduction variants x seeds x schedule lengths, DeiT or VPT recipe.

    python benchmarks/study.py --out output/study                       # the whole default grid
    python benchmarks/study.py --out output/study --parallel 2 --threads 1
    python benchmarks/study.py --out output/study --dry-run             # what would run, and each cell's state
    python benchmarks/study.py --out output/study --report-only         # outputs from what is done so far
    python benchmarks/study.py --out runs/tiny --epochs 3 -- --model-kwargs depth=2   # recipe flags for every cell
    python benchmarks/study.py --recipe vpt --out output/study_vpt --epochs 9       # prompt tuning (docs/vpt.md)

The grid: every variant (--variants) x every seed (--seeds) x every schedule length (--epochs) is one
cell, an ordinary ToE/deit/main.py run folder OUT/e<length>/<variant>/seed<seed>. The variants:
  baseline   full-token training (no ToE flags)
  toe        ToE as in the paper (seeds, expansion, merging)
  toe-drop   ToE's selection, the unselected tokens dropped instead of merged
  random     a random subset of the same size per image and step
The three ToE variants train with --toe --token-reduction V --expansion-step 0 E/3 2E/3 --keep-rate 0.5
0.75 1.0 --initialization-keep-rate 0.25 --expansion-multiple-stage 2 (stages at 0, 1/3 and 2/3 of a run
of E epochs, rounded to whole epochs: 9 -> 0 3 6, 36 -> 0 12 24), i.e. the same tokens per stage.
Every cell uses the demo's recipe (ToE/deit/run/demo.sh: a 6-block DeiT-Tiny on 32 px images, 4 px
patches) on the CPU, by default on the demo data; recipe flags after `--` are added to every cell and
override these. With --recipe vpt every cell is the VPT demo's run instead (ToE/vpt/run/demo.sh: VPT-deep
with 8 prompt tokens on the DeiT demo's model, --backbone, by default on data/demo-transfer, ten classes
the backbone never saw); its baseline is plain VPT.

Resumable: a cell whose log.txt holds all its epochs is skipped, any other runs with --auto-resume (it
continues from its last checkpoint), so the study can be stopped at any moment and continued later, or
on another machine, by running the same command. The cells run the library of the checkout that holds
this script (its src/ first on PYTHONPATH), whose commit each attempt records, whatever toe the
interpreter has installed. A cell that fails is reported and the others go on
(exit status 1 at the end). A cell that another study.py is training at that moment is left alone.
The recipe flags are recorded in OUT/study-settings.json at the first run; a study is only continued
with the same ones (adding variants, seeds or lengths is fine). Each cell's console output is appended
to its console.log.

At the end (and with --report-only) every cell's log.txt is collected into OUT/study.json and
summarised in OUT/study.md (a table per length: mean and std over seeds of final and best top-1 of the
model and its EMA, train compute and wall time, the speedup over the baseline measured and analytic,
and the baseline's top-1 at equal compute), OUT/study_curves.png (top-1 against cumulative compute) and
OUT/study_final.png (final top-1 per variant with the seed spread). See docs/study.md.

With --holdout DIR every finished cell's final weights (model and EMA) are also evaluated once on DIR's
val/ split (DIR in the layout of --data; e.g. `python datasets/make_demo_data.py --out data/demo-holdout
--seed 1 --val-per-class 200` for 2000 images apart from the demo's), through the recipe's --eval; the
result is kept in the cell (holdout.json) and the tables gain holdout columns. A 500-image validation
set resolves top-1 to about ±1.7 points, 2000 images to about ±0.8.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from study_figures import curves_figure, final_figure
from study_holdout import evaluate_cell, read_holdout
from study_report import (
    ATTEMPTS_FILE,
    VARIANTS,
    Cell,
    cell_status,
    cells_on_disk,
    collect,
    describe_status,
    markdown,
)

from toe.figures import save_figure
from toe.files import write_text_atomically
from toe.flag_types import count, positive
from toe.options import ArgumentParser, UserError, run_main

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "datasets" / "make_demo_data.py"
SETTINGS_FILE = "study-settings.json"
LOCK_FILE = ".study-lock"

# the demo's recipe (ToE/deit/run/demo.sh) on the CPU, without data, output, seed, epochs and ToE flags
BASE_FLAGS = [
    "--model", "deit_tiny_patch16_224", "--input-size", "32", "--patch-size", "4", "--model-kwargs", "depth=6",
    "--batch-size", "64", "--unscale-lr", "--lr", "1e-3", "--warmup-epochs", "0", "--drop-path", "0.05",
    "--aa", "rand-m5-mstd0.5-inc1", "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--model-ema-decay", "0.99",
    "--device", "cpu", "--num_workers", "0", "--no-progress",
]  # fmt: skip
# the VPT demo's recipe (ToE/vpt/run/demo.sh), without data, output, seed, epochs, backbone and ToE flags
VPT_BASE_FLAGS = [
    "--model", "deit_tiny_patch16_224", "--input-size", "32", "--model-kwargs", "patch_size=4", "depth=6",
    "--vpt", "deep", "--prompt-tokens", "8", "--warmup-epochs", "1", "--batch-size", "64", "--lr", "0.1",
    "--device", "cpu", "--num_workers", "0", "--no-progress",
]  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """What a study of one recipe runs: its script, base flags and default data (with the generator's flags)."""

    script: Path
    base_flags: list[str]
    data: Path
    generator_flags: list[str]


RECIPES = {
    "deit": Recipe(ROOT / "ToE" / "deit" / "main.py", BASE_FLAGS, Path("data/demo"), []),
    "vpt": Recipe(
        ROOT / "ToE" / "vpt" / "main.py",
        VPT_BASE_FLAGS,
        Path("data/demo-transfer"),
        ["--task", "new-shapes", "--train-per-class", "100", "--val-per-class", "50", "--seed", "1"],
    ),
}
# the paper's DeiT schedule shape; the stage starts come from the length
TOE_FLAGS = [
    "--keep-rate",
    "0.5",
    "0.75",
    "1.0",
    "--initialization-keep-rate",
    "0.25",
    "--expansion-multiple-stage",
    "2",
]
# recipe flags (by argparse destination) that the study sets for every cell: not accepted after --
STUDY_OWNED = {
    "data_path": "--data-path",
    "output_dir": "--output_dir",
    "seed": "--seed",
    "epochs": "--epochs",
    "start_epoch": "--start_epoch",
    "resume": "--resume",
    "auto_resume": "--auto-resume",
    "eval": "--eval",
    "toe": "--toe",
    "token_reduction": "--token-reduction",
    "expansion_step": "--expansion-step",
    "keep_rate": "--keep-rate",
    "initialization_keep_rate": "--initialization-keep-rate",
    "expansion_multiple_stage": "--expansion-multiple-stage",
    "distance": "--distance",
    "seeding": "--seeding",
    "sparse_eval": "--sparse-eval",
}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="benchmarks/study.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] [-- RECIPE_FLAGS ...]",
    )
    p.add_argument("--out", type=Path, default=Path("output/study"), help="the study's folder (default output/study)")
    p.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default="deit",
        help="deit (the DeiT demo's training, default) or vpt (the VPT demo's prompt tuning of --backbone)",
    )
    p.add_argument(
        "--backbone",
        type=Path,
        default=Path("output/demo/checkpoint.pth"),
        help="with --recipe vpt: the frozen model to prompt-tune (default: the DeiT demo's, make demo)",
    )
    p.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        metavar="VARIANT",
        help=f"any of {', '.join(VARIANTS)} (default: all four)",
    )
    p.add_argument("--seeds", nargs="+", type=count, default=[0, 1, 2], metavar="SEED", help="default: 0 1 2")
    p.add_argument(
        "--epochs",
        nargs="+",
        type=int,
        default=[9, 36],
        metavar="E",
        help="schedule lengths, at least 3 (default: 9 36)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset in ImageNet layout (default data/demo, or data/demo-transfer with --recipe vpt: the demo "
        "data, made with datasets/make_demo_data.py when it does not exist)",
    )
    p.add_argument(
        "--parallel", type=positive, default=1, metavar="N", help="cells trained at the same time (default 1)"
    )
    p.add_argument(
        "--threads",
        type=positive,
        default=None,
        metavar="T",
        help="threads per cell: OMP_NUM_THREADS and MKL_NUM_THREADS of its process (default: the machine's cores "
        "divided by --parallel)",
    )
    p.add_argument(
        "--holdout",
        type=Path,
        default=None,
        metavar="DIR",
        help="also evaluate every finished cell's final model and EMA on DIR/val (DIR in the layout of --data), "
        "once; the tables gain holdout columns",
    )
    p.add_argument("--python", default=sys.executable, help="interpreter that runs the cells (default: this one)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print every cell's state and command; run nothing")
    mode.add_argument("--report-only", action="store_true", help="write the outputs from what is done; run nothing")
    return p


@dataclass(frozen=True)
class Study:
    """The checked command line."""

    out: Path
    recipe: Recipe
    cells: list[Cell]
    data: Path
    holdout: Path | None
    parallel: int
    threads: int
    python: str
    pass_through: list[str]
    dry_run: bool
    report_only: bool


def stage_starts(length: int) -> list[int]:
    """ToE's stage starts for a run of ``length`` epochs: 0, 1/3 and 2/3 of it, rounded to whole epochs."""
    starts = [0, round(length / 3), round(2 * length / 3)]
    if not 0 < starts[1] < starts[2] < length:
        raise UserError(
            f"--epochs {length}: ToE's stages at 0, 1/3 and 2/3 of the run ({' '.join(map(str, starts))}) would not be "
            "distinct epochs of it; use at least 3 epochs"
        )
    return starts


def cell_flags(cell: Cell, data: Path, folder: Path) -> list[str]:
    """The flags that make a cell of the grid (after the base and pass-through flags)."""
    flags = ["--data-path", str(data), "--output_dir", str(folder), "--auto-resume"]
    flags += ["--seed", str(cell.seed), "--epochs", str(cell.length)]
    if cell.variant != "baseline":
        starts = [str(s) for s in stage_starts(cell.length)]
        flags += ["--toe", "--token-reduction", cell.variant, "--expansion-step", *starts, *TOE_FLAGS]
    return flags


def cell_command(study: Study, cell: Cell) -> list[str]:
    return [
        study.python,
        str(study.recipe.script),
        *study.recipe.base_flags,
        *study.pass_through,
        *cell_flags(cell, study.data, study.out / cell.name),
    ]


# ---------------------------------------------------------------------------------------------------------
# checking the command line


def parse(argv: list[str]) -> Study:
    """Parse and check the command line (``--`` starts the recipe flags); mistakes are one-line UserErrors."""
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    pass_through = argv[split + 1 :]
    for length in args.epochs:
        stage_starts(length)
    recipe = RECIPES[args.recipe]
    if args.recipe == "vpt":
        if not args.backbone.is_file():
            raise UserError(f"--backbone {args.backbone}: no such file (make demo trains the default one)")
        recipe = Recipe(recipe.script, [*recipe.base_flags, "--finetune", str(args.backbone)], recipe.data,
                        recipe.generator_flags)  # fmt: skip
    if args.data is not None and not args.data.exists() and args.data != recipe.data:
        raise UserError(
            f"--data {args.data} does not exist (only the default, {recipe.data}, is generated when missing)"
        )
    args.data = args.data or recipe.data
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file, not a folder")
    if args.data.exists() and not args.data.is_dir():
        raise UserError(f"--data {args.data} is a file, not a folder")
    python = shutil.which(args.python)
    if python is None:
        raise UserError(f"--python {args.python}: no such interpreter (or it is not executable)")
    if args.holdout is not None and not (args.holdout / "val").is_dir():
        raise UserError(f"--holdout {args.holdout} has no val/ folder (it takes a data folder in the layout of --data)")
    if args.report_only and not args.out.is_dir():
        raise UserError(f"--out {args.out} does not exist: nothing to report")
    check_pass_through(recipe, pass_through)
    cells = [
        Cell(length, variant, seed)
        for length in dict.fromkeys(args.epochs)
        for seed in dict.fromkeys(args.seeds)
        for variant in dict.fromkeys(args.variants)
    ]
    return Study(
        out=args.out,
        recipe=recipe,
        cells=sorted(cells, key=Cell.sort_key),
        data=args.data,
        holdout=args.holdout,
        parallel=args.parallel,
        threads=args.threads or max(1, (os.cpu_count() or 1) // args.parallel),
        python=python,
        pass_through=pass_through,
        dry_run=args.dry_run,
        report_only=args.report_only,
    )


def check_pass_through(recipe: Recipe, flags: list[str]) -> None:
    """Recipe flags after ``--`` must be flags of the recipe and must not set what the study sets."""
    from toe.recipes import deit, vpt

    parser = (vpt if recipe.script.parent.name == "vpt" else deit).build_parser()
    given, unknown = parser.parse_known_args([*recipe.base_flags, *flags])
    script = recipe.script.relative_to(ROOT)
    if unknown:
        raise UserError(f"recipe flags after --: {' '.join(unknown)} not known to {script} (see its --help)")
    defaults = parser.parse_args(recipe.base_flags)
    for dest, flag in STUDY_OWNED.items():
        if getattr(given, dest, None) != getattr(defaults, dest, None):
            raise UserError(
                f"recipe flags after --: {flag} is set by the study for every cell (use study.py's own flags)"
            )


def check_settings(study: Study) -> dict:
    """The study's recorded settings; refuse other recipe flags than those it was started with."""
    settings = {
        "script": str(study.recipe.script.relative_to(ROOT)),
        "base_flags": study.recipe.base_flags,
        "pass_through": study.pass_through,
        "data": str(study.data),
    }
    path = study.out / SETTINGS_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} is damaged (not JSON); restore it or start another --out") from None
        for key, what in (("base_flags", "base recipe flags"), ("pass_through", "recipe flags after --")):
            if recorded.get(key) != settings[key]:
                raise UserError(
                    f"{study.out} was started with other {what} ({shlex.join(recorded.get(key) or []) or 'none'}, now "
                    f"{shlex.join(settings[key]) or 'none'}): run it with the same flags or choose another --out"
                )
        return recorded
    return settings


# ---------------------------------------------------------------------------------------------------------
# running


def ensure_data(study: Study) -> None:
    """Generate the demo data when --data does not exist (into a temporary folder, renamed when complete)."""
    if study.data.exists():
        return
    partial = study.data.with_name(study.data.name + ".partial")
    print(f"generating the demo data in {study.data}", flush=True)
    command = [study.python, str(GENERATOR), "--out", str(partial), *study.recipe.generator_flags]
    if subprocess.run(command).returncode != 0:
        raise UserError(f"--data {study.data}: generating it failed ({shlex.join(command)})")
    partial.rename(study.data)


def git_commit() -> str | None:
    """The code's commit (``git rev-parse HEAD``), None outside a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def try_lock(folder: Path) -> int | None:
    """An open, exclusively locked file in ``folder`` (its descriptor), or None when another process holds it."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@dataclass
class Running:
    cell: Cell
    process: subprocess.Popen
    lock: int
    started: float


def start(study: Study, cell: Cell, lock: int, commit: str | None) -> subprocess.Popen:
    """Start a cell's training, its output appended to its console.log; the cell's lock goes with the process
    (held until the training ends, even if this runner is killed)."""
    folder = study.out / cell.name
    command = cell_command(study, cell)
    date = datetime.datetime.now().isoformat(timespec="seconds")
    attempt = {"date": date, "threads": study.threads, "parallel": study.parallel, "host": platform.node()}
    with open(folder / ATTEMPTS_FILE, "a") as handle:
        handle.write(json.dumps({**attempt, "commit": commit}) + "\n")
    env = cell_environment(study.threads)
    with open(folder / "console.log", "ab") as console:
        console.write(f"=== benchmarks/study.py {date}: {shlex.join(command)}\n".encode())
        console.flush()
        return subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
            pass_fds=(lock,),
        )  # fmt: skip


def cell_environment(threads: int) -> dict[str, str]:
    """The environment of a cell's process: ``threads`` threads, and this checkout's library (the commit each
    attempt records) rather than whichever toe the interpreter has installed."""
    python_path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": python_path}


def evaluate_holdout(study: Study, cells: list[Cell], threads: int) -> list[Cell]:
    """Evaluate each of ``cells`` that is finished and has no up-to-date holdout.json on --holdout, one at a
    time with ``threads`` threads; returns the cells whose evaluation failed."""
    failed = []
    for cell in cells:
        folder = study.out / cell.name
        if cell_status(folder, cell.length)[0] != "done" or read_holdout(folder, study.holdout, cell.length):
            continue
        lock = try_lock(folder)
        if lock is None:  # another study.py is at it
            continue
        try:
            env = cell_environment(threads)
            result, error = evaluate_cell(folder, cell.length, cell_command(study, cell), study.holdout, env)
        finally:
            os.close(lock)
        if result is None:
            failed.append(cell)
            print(f"{cell.name}: holdout evaluation FAILED: {error}", flush=True)
        else:
            ema = "" if result["test_ema_acc1"] is None else f", EMA {result['test_ema_acc1']:.2f}%"
            top1 = f"{result['test_acc1']:.2f}%{ema} on {result['images']} images"
            print(f"{cell.name}: holdout top-1 {top1}", flush=True)
    return failed


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def run_cells(study: Study, commit: str | None) -> tuple[list[Cell], list[Cell]]:
    """Train every unfinished cell, ``study.parallel`` at a time (generating the data first when it is missing);
    returns (failed cells, cells another process is training)."""
    todo = []
    for cell in study.cells:
        status, finished = cell_status(study.out / cell.name, cell.length)
        if status == "done":
            print(f"{cell.name}: done, skipped", flush=True)
        else:
            todo.append((cell, describe_status(status, finished, cell.length)))
    if todo:
        ensure_data(study)
    failed: list[Cell] = []
    busy: list[Cell] = []
    running: list[Running] = []
    total = len(todo)

    def finish(job: Running) -> None:
        os.close(job.lock)
        code = job.process.returncode
        minutes = (time.monotonic() - job.started) / 60
        if code == 0 and cell_status(study.out / job.cell.name, job.cell.length)[0] == "done":
            print(f"{job.cell.name}: done in {minutes:.1f} min", flush=True)
            if study.holdout is not None:  # while the other cells go on
                failed.extend(evaluate_holdout(study, [job.cell], study.threads))
            return
        failed.append(job.cell)
        console = study.out / job.cell.name / "console.log"
        print(
            f"{job.cell.name}: FAILED (exit {code}) after {minutes:.1f} min: {last_line(console)} [{console}]",
            flush=True,
        )

    try:
        while todo or running:
            while todo and len(running) < study.parallel:
                cell, state = todo.pop(0)
                folder = study.out / cell.name
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    lock = try_lock(folder)
                except OSError as error:  # a file in the folder's place, no permission, a full disk: this cell only
                    failed.append(cell)
                    print(f"{cell.name}: FAILED: cannot use {folder} ({error.strerror or error})", flush=True)
                    continue
                if lock is None:
                    busy.append(cell)
                    print(f"{cell.name}: being trained by another process, left alone", flush=True)
                    continue
                if cell_status(folder, cell.length)[0] == "done":  # finished by another process meanwhile
                    os.close(lock)
                    print(f"{cell.name}: done, skipped", flush=True)
                    continue
                print(f"[{total - len(todo)}/{total}] {cell.name}: {state}, training", flush=True)
                running.append(Running(cell, start(study, cell, lock, commit), lock, time.monotonic()))
            time.sleep(0.2)
            for job in [job for job in running if job.process.poll() is not None]:
                running.remove(job)
                finish(job)
    except KeyboardInterrupt:
        for job in running:
            job.process.terminate()
        for job in running:
            job.process.wait()
            os.close(job.lock)
        raise
    return failed, busy


def report(study: Study, settings: dict, commit: str | None) -> list[Path] | None:
    """Collect the grid's cells (and any other cell folder under --out) into the outputs; None: nothing yet."""
    cells = sorted(set(study.cells) | set(cells_on_disk(study.out)), key=Cell.sort_key)
    entries = collect(study.out, cells, study.holdout)
    if not any(entry["epochs"] for entry in entries):
        return None
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit,
        "torch": torch.__version__,
        "threads": study.threads,
        "parallel": study.parallel,
        "settings": settings,
        "grid": {
            "variants": list(dict.fromkeys(c.variant for c in study.cells)),
            "seeds": list(dict.fromkeys(c.seed for c in study.cells)),
            "lengths": list(dict.fromkeys(c.length for c in study.cells)),
        },
        "cells": entries,
    }
    paths = [study.out / name for name in ("study.json", "study.md", "study_curves.png", "study_final.png")]
    write_text_atomically(paths[0], json.dumps(result, indent=1) + "\n")
    write_text_atomically(paths[1], markdown(result))
    save_figure(curves_figure(result), paths[2], "--out")
    save_figure(final_figure(result), paths[3], "--out")
    return paths


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Run (or with --dry-run / --report-only, only look at) the study; exit status 1 when a cell failed."""
    study = parse(list(sys.argv[1:] if argv is None else argv))
    settings = check_settings(study)
    if study.dry_run:
        for cell in study.cells:
            status, finished = cell_status(study.out / cell.name, cell.length)
            print(f"{cell.name}: {describe_status(status, finished, cell.length)}")
            print(f"  {shlex.join(cell_command(study, cell))}")
        if not study.data.exists():
            print(f"(--data {study.data} does not exist: it would be generated first)")
        return
    commit = git_commit()
    failed: list[Cell] = []
    if not study.report_only:
        study.out.mkdir(parents=True, exist_ok=True)
        if not (study.out / SETTINGS_FILE).exists():
            (study.out / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
        previous = signal.signal(signal.SIGTERM, _terminate)  # a kill stops the cells too, as Ctrl-C does
        try:
            if study.holdout is not None:  # the cells finished before; run_cells evaluates those it finishes
                failed += evaluate_holdout(study, study.cells, study.threads * study.parallel)
            trained, busy = run_cells(study, commit)
            failed += trained
        except KeyboardInterrupt:
            print("stopped: run the same command to continue the unfinished cells", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        if busy:
            print(f"{len(busy)} cell(s) left to the other process training them: {', '.join(c.name for c in busy)}")
    written = report(study, settings, commit)
    if written is None:
        if study.report_only:
            raise UserError(f"--out {study.out}: no cell has finished an epoch yet, nothing to report")
        print("no cell has finished an epoch yet: nothing to report")
    else:
        print("wrote " + ", ".join(str(p) for p in written))
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(c.name for c in failed)} (see above and their console.log)")
        raise SystemExit(1)


if __name__ == "__main__":
    run_main(main)
