"""The flow every single-run recipe shares, written once: :func:`run_recipe`.

A recipe is its flags (parsed and checked by the recipe) plus a ``build`` function that turns them into a
:class:`~toe.engine.TrainingRun` (model, data, loss, evaluation) and says how to describe it: a
:class:`Recipe`. The skeleton does the rest, the same way for DeiT, LV-ViT, VPT and YOLOS:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from ..options import flags_that_may_change_on_resume, token_select_from_args
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
        resume_options: more keywords for :func:`~toe.recipes.resume.resume_run` (``spell``: how messages
            write a flag, for recipes whose flags use underscores).
        after_resume: a check of the checkpoint found (None: a fresh start), before evaluating or training.
        evaluate: ``--eval`` done the recipe's own way (YOLOS: weights of any upstream file); returns the
            metrics. None: evaluate the checkpoint found (or the ``--finetune`` weights).
    """

    run: TrainingRun
    header: Callable[[], str]
    eval_report: Callable[[dict], list[str]]
    save_flags: Callable[[Path | None, argparse.Namespace, DistInfo], None] = save_args
    resume_options: dict[str, Any] = field(default_factory=dict)
    after_resume: Callable[[FoundCheckpoint | None], None] | None = None
    evaluate: Callable[[], dict] | None = None


Build = Callable[[argparse.Namespace, DistInfo, "TokenSelect | None", "Path | None", Say], Recipe]


def run_recipe(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    build: Build,
    output: tuple[str, str] | None = None,
    dist_url: str | None = None,
) -> dict | None:
    """Train or evaluate with ``args``, parsed by ``parser`` and checked: the last epoch's log record, or the
    evaluation's metrics.

    ``build(args, dist, token_select, output_dir, say)`` makes the recipe's :class:`Recipe`; ``output`` is
    the run folder and how the recipe spells its flag (default ``args.output_dir``, ``--output_dir``);
    ``dist_url`` the rendezvous of ``--dist_url`` (None: torchrun's environment). A resume may change the
    flags ``parser`` marks with :func:`~toe.options.may_change_on_resume`, no other."""
    token_select = token_select_from_args(args)
    dist = init_distributed(args.device, dist_url) if dist_url is not None else init_distributed(args.device)
    free = flags_that_may_change_on_resume(parser)
    try:
        return _train_or_evaluate(args, dist, token_select, build, output or (args.output_dir, "--output_dir"), free)
    finally:
        cleanup(dist)


def _train_or_evaluate(
    args: argparse.Namespace,
    dist: DistInfo,
    token_select: TokenSelect | None,
    build: Build,
    output: tuple[str, str],
    free: frozenset[str],
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
    if message := resume_run(run, found, **{"free": free, **recipe.resume_options}):
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
