"""The flow every single-run recipe shares, written once: :func:`run_recipe`.

A recipe is its flags (a parser and a ``check`` of their combinations) plus a ``build`` function that turns them into a
:class:`~toe.engine.TrainingRun` (model, data, loss, evaluation) and says how to describe it: a
:class:`Recipe`. The skeleton does the rest, the same way for DeiT, LV-ViT, VPT and YOLOS:

0. the recipe's ``check`` of its flags; every one-line error from here on names flags as the recipe spells
   them (the library writes ``--batch-size``, YOLOS and EfficientTrain users read ``--batch_size``);
1. the ToE selector from the ToE flags, the processes (torchrun or one), cleaned up however the run ends;
2. the run folder: created and locked (one run per folder; another run's folder only when resuming);
3. ``build``;
4. the checkpoint to continue from (``--resume FILE``, or ``--auto-resume`` in the run folder) and the
   resume with its checks;
5. ``--eval``: evaluate (never a random model) and print the recipe's lines, or else save the flags,
   print the header and the ToE schedule, train and log.

EfficientTrain's stages do not fit: each stage finds its checkpoint before building, to adapt it to the
stage's input size (:mod:`toe.recipes.efficienttrain`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
from ..options import flags_spelled_by, flags_that_may_change_on_resume, spelling, token_select_from_args
from ..token_select import TokenSelect
from .build import train_and_log
from .resume import check_eval_weights, resume_run
from .run_folder import prepare_output_dir, save_args

Say = Callable[[str], None]


@dataclass
class Recipe:
    """What a recipe's ``build`` returns to :func:`run_recipe`.

    Attributes:
        run: the training run (model, data, loss, optimizer, schedule, evaluation).
        header: the line printed before training (called after the resume).
        eval_report: ``--eval``'s metrics -> the lines to print.
        save_flags: writes the flags into the run folder (``args.json`` unless the recipe keeps another file).
        after_resume: a check of the checkpoint found (None: a fresh start), before evaluating or training.
        evaluate: ``--eval`` done the recipe's own way (YOLOS: weights of any upstream file); returns the
            metrics. None: evaluate the checkpoint found (or the ``--finetune`` weights).
    """

    run: TrainingRun
    header: Callable[[], str]
    eval_report: Callable[[dict], list[str]]
    save_flags: Callable[[Path | None, argparse.Namespace, DistInfo], None] = save_args
    after_resume: Callable[[FoundCheckpoint | None], None] | None = None
    evaluate: Callable[[], dict] | None = None


Build = Callable[[argparse.Namespace, DistInfo, "TokenSelect | None", "Path | None", Say], Recipe]


def run_recipe(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    build: Build,
    check: Callable[[argparse.Namespace], None] | None = None,
    output: tuple[str, str] | None = None,
    dist_url: str | None = None,
) -> dict | None:
    """Train or evaluate with ``args``, parsed by ``parser``: the last epoch's log record, or the evaluation's
    metrics. ``check(args)`` refuses flag combinations that make no sense, before any work.

    ``build(args, dist, token_select, output_dir, say)`` makes the recipe's :class:`Recipe`; ``output`` is
    the run folder and how the recipe spells its flag (default ``args.output_dir``, ``--output_dir``);
    ``dist_url`` the rendezvous of ``--dist_url`` (None: torchrun's environment). A resume may change the
    flags ``parser`` marks with :func:`~toe.options.may_change_on_resume`, no other."""
    with flags_spelled_by(parser):
        if check is not None:
            check(args)
        token_select = token_select_from_args(args)
        dist = init_distributed(args.device, dist_url) if dist_url is not None else init_distributed(args.device)
        try:
            return _train_or_evaluate(
                args, dist, token_select, build, output or (args.output_dir, "--output_dir"), parser
            )
        finally:
            cleanup(dist)


def _train_or_evaluate(
    args: argparse.Namespace,
    dist: DistInfo,
    token_select: TokenSelect | None,
    build: Build,
    output: tuple[str, str],
    parser: argparse.ArgumentParser,
) -> dict | None:
    resuming = bool(args.resume) or args.auto_resume or args.eval
    output_dir = prepare_output_dir(output[0], resuming, dist, output[1])
    say: Say = print if dist.is_main else (lambda *_: None)
    recipe = build(args, dist, token_select, output_dir, say)
    run = recipe.run
    if args.eval and recipe.evaluate is not None:
        metrics = recipe.evaluate()
        for line in recipe.eval_report(metrics):
            say(line)
        return metrics

    found = find_checkpoint(args.resume, args.auto_resume, output_dir, clean=dist.is_main)
    free, spell = flags_that_may_change_on_resume(parser), spelling(parser)
    if message := resume_run(run, found, free=free, spell=spell):
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
    return train_and_log(run, RunLogger(output_dir, dist.is_main), recipe.header())
