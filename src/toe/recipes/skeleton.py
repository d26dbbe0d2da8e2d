"""The flow every single-run recipe shares, written once: :func:`run_recipe`.

A recipe is its flags (a parser and a ``check`` of their combinations) plus a ``build`` function that turns them into a
:class:`~toe.engine.TrainingRun` (model, data, loss, evaluation) and says how to describe it: a
:class:`Recipe`. The skeleton does the rest, the same way for DeiT, LV-ViT, VPT, YOLOS and EfficientTrain's stages:

0. the recipe's ``check`` of its flags; every one-line error from here on names flags as the recipe spells
   them (the library writes ``--batch-size``, YOLOS and EfficientTrain users read ``--batch_size``);
1. the ToE selector from the ToE flags, the processes (torchrun or one), cleaned up however the run ends
   (or those of the caller: EfficientTrain's curriculum driver runs its stages in one set);
2. the run folder: created and locked (one run per folder; another run's folder only when resuming);
3. ``build``;
4. the checkpoint to continue from (``--resume FILE``, or ``--auto-resume`` in the run folder) and the
   resume with its checks;
5. ``--eval``: evaluate (never a random model) and print the recipe's lines, or else save the flags,
   print the header and the ToE schedule, train and log;
6. out of device memory anywhere in 3-5: one line naming the recipe's batch, accumulation and precision flags
   (:class:`~toe.errors.OutOfMemory`).

A recipe with a ``before_build`` hook (EfficientTrain's stages, :mod:`toe.recipes.efficienttrain`) finds and
checks its checkpoint before step 3, and the hook says whether there is anything to build: a stage whose
epochs are done builds nothing, a resume that changes the plan is refused before any data is loaded. Its
:class:`Recipe` adapts the checkpoint to the model built (another stage's input size) before the resume.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine import (
    DistInfo,
    FoundCheckpoint,
    RunLogger,
    TrainingRun,
    evaluate_checkpoint,
    find_checkpoint,
    init_distributed,
)
from ..engine.distributed import cleanup
from ..errors import OutOfMemory
from ..options import flags_spelled_by, flags_that_may_change_on_resume, spelling, token_select_from_args
from ..token_select import TokenSelect
from .build import train_and_log
from .resume import check_eval_weights, resume_changes, resume_run
from .run_folder import plain_args, prepare_output_dir, save_args

Say = Callable[[str], None]
Resume = Callable[[FoundCheckpoint], "str | None"]  # restores a checkpoint into the run; the line to print


@dataclass
class Recipe:
    """What a recipe's ``build`` returns to :func:`run_recipe`.

    Attributes:
        run: the training run (model, data, loss, optimizer, schedule, evaluation).
        header: the line printed before training (called after the resume).
        eval_report: ``--eval``'s metrics -> the lines to print.
        save_flags: writes the flags into the run folder (``args.json`` unless the recipe keeps another file).
        after_resume: a check of the checkpoint found (None: a fresh start), before evaluating or training.
        evaluate: ``--eval`` done the recipe's own way (YOLOS: weights of any upstream file), given the
            skeleton's resume (checks and all) for a checkpoint it finds; returns the metrics. None: evaluate the
            checkpoint found (or the ``--finetune`` weights).
        adapt: changes the checkpoint found in place to fit the run before it is restored, returning a note
            for the resume's line (EfficientTrain: another stage's input size resampled to this one's).
        toe_epochs: the epochs the ToE schedule printed under the header spans (None: the run's).
    """

    run: TrainingRun
    header: Callable[[], str]
    eval_report: Callable[[dict], list[str]]
    save_flags: Callable[[Path | None, argparse.Namespace, DistInfo], None] = save_args
    after_resume: Callable[[FoundCheckpoint | None], None] | None = None
    evaluate: Callable[[Resume], dict] | None = None
    adapt: Callable[[FoundCheckpoint], str | None] | None = None
    toe_epochs: int | None = None


Build = Callable[[argparse.Namespace, DistInfo, "TokenSelect | None", "Path | None", Say], Recipe]
BeforeBuild = Callable[[argparse.Namespace, "FoundCheckpoint | None", Say], bool]


def run_recipe(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    build: Build,
    check: Callable[[argparse.Namespace], None] | None = None,
    output: tuple[str, str] | None = None,
    dist_url: str | None = None,
    *,
    dist: DistInfo | None = None,
    before_build: BeforeBuild | None = None,
    also_free: Iterable[str] = (),
) -> dict | None:
    """Train or evaluate with ``args``, parsed by ``parser``: the last epoch's log record, or the evaluation's
    metrics. ``check(args)`` refuses flag combinations that make no sense, before any work.

    ``build(args, dist, token_select, output_dir, say)`` makes the recipe's :class:`Recipe`; ``output`` is
    the run folder and how the recipe spells its flag (default ``args.output_dir``, ``--output_dir``);
    ``dist_url`` the rendezvous of ``--dist_url`` (None: torchrun's environment), unless ``dist`` gives the
    processes the caller started (and ends). A resume may change the flags ``parser`` marks with
    :func:`~toe.options.may_change_on_resume` and those of ``also_free``, no other.

    ``before_build(args, found, say)``: the checkpoint is found (None: a fresh start) and checked against the
    flags before building; the hook refuses what cannot go on and says whether there is anything to build
    (False: nothing is built and None returned)."""
    with flags_spelled_by(parser):
        if check is not None:
            check(args)
        token_select = token_select_from_args(args)
        free = flags_that_may_change_on_resume(parser) | set(also_free)
        try:
            with _processes(args.device, dist_url, dist) as processes:
                return _train_or_evaluate(
                    parser,
                    args,
                    processes,
                    token_select,
                    build,
                    output or (args.output_dir, "--output_dir"),
                    free,
                    before_build,
                )
        except torch.OutOfMemoryError:
            pass  # raised below, outside this block: the new error holds no frames of the failed run
        raise OutOfMemory(out_of_memory_advice(parser))


ACCUMULATION_FLAGS = ("accum_iter", "update_freq")  # DeiT and VPT; EfficientTrain


def out_of_memory_advice(parser: argparse.ArgumentParser) -> str:
    """What to lower when a run of ``parser``'s recipe is out of memory, in its spelling: the batch per process
    (with its gradient accumulation flag, where it has one, to keep the effective batch) or the precision."""
    spell = spelling(parser)
    dests = {action.dest for action in parser._actions}
    accumulation = next((dest for dest in ACCUMULATION_FLAGS if dest in dests), None)
    keep = ""
    if accumulation is not None:
        keep = f" with more gradient accumulation ({spell(accumulation)}) to keep the effective batch"
    return (
        f"out of memory: use a smaller batch per process ({spell('batch_size')}){keep}, "
        f"or bf16 autocast ({spell('amp_dtype')} bf16)"
    )


@contextmanager
def _processes(device: str, dist_url: str | None, dist: DistInfo | None) -> Iterator[DistInfo]:
    """``dist``, the caller's processes; else those of torchrun (or of ``dist_url``), cleaned up however the run
    ends."""
    if dist is not None:
        yield dist
        return
    started = init_distributed(device, dist_url) if dist_url is not None else init_distributed(device)
    try:
        yield started
    finally:
        cleanup(started)


def _train_or_evaluate(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    dist: DistInfo,
    token_select: TokenSelect | None,
    build: Build,
    output: tuple[str, str],
    free: frozenset[str],
    before_build: BeforeBuild | None,
) -> dict | None:
    resuming = bool(args.resume) or args.auto_resume or args.eval
    output_dir = prepare_output_dir(output[0], resuming, dist, output[1])
    say: Say = print if dist.is_main else (lambda *_: None)
    spell = spelling(parser)

    def find() -> FoundCheckpoint | None:
        auto_flag = spell("auto_resume")
        return find_checkpoint(args.resume, args.auto_resume, output_dir, auto_flag=auto_flag, clean=dist.is_main)

    found: FoundCheckpoint | None = None
    if before_build is not None:
        found = find()
        if found is not None:  # its flags at once; its processes and images once the run is built
            resume_changes(plain_args(args), {}, found, free, spell)
        if not before_build(args, found, say):
            return None
    recipe = build(args, dist, token_select, output_dir, say)
    run = recipe.run
    if args.eval and recipe.evaluate is not None:
        metrics = recipe.evaluate(lambda checkpoint: resume_run(run, checkpoint, free=free, spell=spell))
        for line in recipe.eval_report(metrics):
            say(line)
        return metrics

    if before_build is None:
        found = find()
    if message := resume_run(run, found, recipe.adapt, free=free, spell=spell):
        say(message)
    if recipe.after_resume is not None:
        recipe.after_resume(found)
    if args.eval:
        check_eval_weights(found, getattr(args, "finetune", ""))
        metrics = evaluate_checkpoint(run)
        for line in recipe.eval_report(metrics):
            say(line)
        return metrics

    recipe.save_flags(output_dir, args, dist)
    log = RunLogger(output_dir, dist.is_main)
    return train_and_log(run, log, recipe.header(), toe_epochs=recipe.toe_epochs)
