"""Command-line plumbing shared by every recipe and the ``toe`` command.

- :class:`ArgumentParser`: argparse that reports a mistake as one line (no usage dump, no traceback);
- :func:`run_main`: a :class:`~toe.errors.UserError` found after parsing ends the same way;
- the ToE flags (spec section 2) with each recipe's paper settings as defaults.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import torch

from .engine.preemption import REQUEUE_STATUS, Preempted
from .engine.run_lock import release_run_folders
from .errors import UserError  # also re-exported: ``from toe.options import UserError`` keeps working
from .schedule import DISTANCES, REDUCTIONS, SEEDINGS, ToESchedule
from .token_select import TokenSelect


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Run a command's ``main``; a :class:`UserError` becomes one line on stderr and exit status 2, a
    pre-emption (:class:`~toe.engine.preemption.Preempted`, its checkpoint written) the status 143 that asks
    for a requeue. The run folders the command locked are released at its end (in-process callers run
    several commands)."""
    try:
        status = _status_of(main, argv)
    finally:
        release_run_folders()
    if status:
        sys.exit(status)


def _status_of(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None) -> int:
    """Run ``main``; 0, or the exit status of the error it ended with (its one line written to stderr).

    The failed call's frames are cleared before returning, so that a DataLoader iterator in them shuts its
    workers down at once; kept alive until interpreter exit, its workers were killed there and torch's
    SIGCHLD handler printed an "Exception ignored in atexit callback" traceback after the error line."""
    try:
        main(argv)
    except (UserError, KeyboardInterrupt, Preempted, RuntimeError) as error:
        explained = _explain(error)
        if explained is None:
            raise
        traceback.clear_frames(error.__traceback__)
        message, status = explained
        sys.stderr.write(message + "\n")
        return status
    return 0


def _explain(error: BaseException) -> tuple[str, int] | None:
    """The line and exit status for an error a user can act on; None for a bug (its traceback is shown)."""
    if isinstance(error, UserError):
        return f"error: {error}", 2
    if isinstance(error, torch.OutOfMemoryError):
        return (
            "error: out of memory: use a smaller batch per process (with more gradient accumulation to keep "
            "the effective batch, e.g. --batch-size and --accum-iter) or bf16 autocast (--amp-dtype bf16)",
            2,
        )
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(error, Preempted):
        return f"stopped: {error}", REQUEUE_STATUS
    if isinstance(error, RuntimeError) and _lost_a_peer(error):
        rank = os.environ.get("RANK", "?")
        detail = str(error).splitlines()[0].split("] ", 1)[-1][:160]
        return (
            f"error: process {rank} lost another process of this torchrun job ({detail}); the checkpoints written "
            "before are kept: look at the other process's output, then restart with --auto-resume (torchrun "
            "--max-restarts N restarts the processes by itself)",
            1,
        )
    return None


def _lost_a_peer(error: RuntimeError) -> bool:
    """Whether ``error`` is a collective that failed because another process of a torchrun job went away."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    text = str(error)
    peer_gone = (
        "Connection reset by peer",
        "Connection closed by peer",
        "Broken pipe",
        "NCCL communicator was aborted",
    )
    return isinstance(error, torch.distributed.DistError) or any(phrase in text for phrase in peer_gone)


@dataclass(frozen=True)
class PaperSettings:
    """A recipe's published ToE settings."""

    expansion_step: tuple[int, ...]
    keep_rate: tuple[float, ...]
    initialization_keep_rate: float
    expansion_multiple_stage: int = 2


PAPER_SETTINGS = {
    "deit": PaperSettings((0, 100, 200), (0.5, 0.75, 1.0), 0.25),
    "lvvit": PaperSettings((0, 100, 200), (0.4, 0.7, 1.0), 0.2),
    "efficienttrain": PaperSettings((0, 100, 200), (0.6, 0.8, 1.0), 0.3),
    "yolos": PaperSettings((5, 100, 200), (0.5, 0.75, 1.0), 0.25),  # YOLOS-Ti; YOLOS-S: 5 50 100
    # VPT: no published settings; DeiT's keep rates at the same fractions (0, 1/3, 2/3) of VPT's 100 epochs
    "vpt": PaperSettings((0, 33, 66), (0.5, 0.75, 1.0), 0.25),
}


def may_change_on_resume(action: argparse.Action) -> argparse.Action:
    """Mark the flag ``action`` defines as one a resume may change: it says where or how the run executes
    (paths, workers, device, precision, progress bars, checkpoint interval), not what it trains. Every other
    flag must keep its recorded value on resume (:mod:`toe.recipes.resume_check`). Returns ``action``."""
    action.may_change_on_resume = True  # type: ignore[attr-defined]
    return action


def flags_that_may_change_on_resume(parser: argparse.ArgumentParser) -> frozenset[str]:
    """The destinations (``num_workers``, ...) of ``parser``'s flags marked by :func:`may_change_on_resume`."""
    return frozenset(a.dest for a in parser._actions if getattr(a, "may_change_on_resume", False))


def spelling(parser: argparse.ArgumentParser) -> Callable[[str], str]:
    """How ``parser`` writes each flag (``batch_size`` -> ``--batch_size`` for YOLOS and EfficientTrain, the
    longest option string), for messages; flags it lacks are written with underscores."""
    names = _option_names(parser)
    return lambda key: names.get(key, f"--{key}")


def _option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each flag's destination -> its longest option string (``batch_size`` -> ``--batch-size``)."""
    return {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}


def in_spelling_of(parser: argparse.ArgumentParser, message: str) -> str:
    """``message`` with each flag it names written as ``parser`` writes it: the library's errors use the
    dashed spelling (``--batch-size``, ``--data-path``), YOLOS and EfficientTrain users typed ``--batch_size``.
    A flag ``parser`` has, or has no counterpart of, is left as it is. The ToE schedule's parameter names
    (``initialization_keep_rate``) become their flags."""
    message = re.sub(r"(?<![\w-])(" + "|".join(k for k in TOE_FLAGS if "_" in k) + r")\b", _toe_flag, message)
    own = {option for action in parser._actions for option in action.option_strings}
    names = _option_names(parser)

    def respell(match: re.Match) -> str:
        flag = match.group(0)
        return flag if flag in own else names.get(flag[2:].replace("-", "_"), flag)

    return re.sub(r"(?<![\w-])--[A-Za-z][\w-]*", respell, message)


@contextmanager
def flags_spelled_by(parser: argparse.ArgumentParser) -> Iterator[None]:
    """A :class:`UserError` raised inside names its flags as ``parser`` writes them (:func:`in_spelling_of`)."""
    try:
        yield
    except UserError as error:
        error.args = (in_spelling_of(parser, str(error)),)  # the same error (its class kept), respelled
        raise


def add_toe_arguments(parser: argparse.ArgumentParser, recipe: str = "deit", always_on: bool = False) -> None:
    """Add the ToE flags. Unless ``always_on``, ToE is off until ``--toe`` or a schedule flag is given."""
    paper = PAPER_SETTINGS[recipe]
    group = parser.add_argument_group(
        "Token Expansion (ToE)",
        "ToE is off unless --toe or one of --expansion-step/--keep-rate/--initialization-keep-rate is given; "
        f"flags left out take the paper's {recipe} settings."
        if not always_on
        else f"Flags left out take the paper's {recipe} settings.",
    )
    if not always_on:
        group.add_argument("--toe", action="store_true", help="train with ToE using the paper's settings")
    group.add_argument(
        "--expansion-step",
        type=int,
        nargs="+",
        default=None,
        metavar="EPOCH",
        help=f"epoch at which each stage starts (paper: {' '.join(map(str, paper.expansion_step))})",
    )
    group.add_argument(
        "--keep-rate",
        type=float,
        nargs="+",
        default=None,
        metavar="RATE",
        help=f"fraction of patch tokens kept per stage (paper: {' '.join(map(str, paper.keep_rate))})",
    )
    group.add_argument(
        "--initialization-keep-rate",
        type=float,
        default=None,
        metavar="RATE",
        help=f"fraction of patch tokens taken as seeds (paper: {paper.initialization_keep_rate})",
    )
    group.add_argument(
        "--expansion-multiple-stage",
        type=int,
        default=None,
        metavar="K",
        help=f"greedy sub-steps per stage (paper: {paper.expansion_multiple_stage})",
    )
    group.add_argument("--distance", choices=DISTANCES, default="cosine", help="token similarity (default cosine)")
    group.add_argument(
        "--seeding",
        choices=SEEDINGS,
        default="reference",
        help="seed raster: the published one (reference) or evenly spread (uniform)",
    )
    group.add_argument(
        "--sparse-eval",
        action="store_true",
        help="also reduce tokens when evaluating, the model and its EMA alike (upstream DeiT evaluates the EMA "
        "full-token)",
    )
    group.add_argument(
        "--token-reduction",
        choices=REDUCTIONS,
        default="toe",
        help="what happens to the tokens left out, with the same token count per stage: toe = the paper "
        "(merged into the kept tokens), toe-drop = ToE's selection without merging (discarded), "
        "random = a fresh random subset per image and step (the random-dropping baseline)",
    )
    parser.set_defaults(toe_recipe=recipe, toe_always_on=always_on)


def toe_enabled(args: argparse.Namespace) -> bool:
    """Whether the parsed flags ask for ToE."""
    return bool(
        args.toe_always_on
        or getattr(args, "toe", False)
        or args.expansion_step is not None
        or args.keep_rate is not None
        or args.initialization_keep_rate is not None
        or args.expansion_multiple_stage is not None
    )


def schedule_from_args(args: argparse.Namespace) -> ToESchedule | None:
    """The validated schedule the flags ask for (paper settings fill what is left out), or None."""
    if not toe_enabled(args):
        defaults = (args.distance == "cosine", args.seeding == "reference", args.token_reduction == "toe")
        if args.sparse_eval or not all(defaults):
            raise UserError(
                "--sparse-eval, --distance, --seeding and --token-reduction need ToE: add --toe or the ToE "
                "schedule flags"
            )
        return None
    paper = PAPER_SETTINGS[args.toe_recipe]

    def pick(value, default):
        return default if value is None else value

    steps, rates = pick(args.expansion_step, paper.expansion_step), pick(args.keep_rate, paper.keep_rate)
    if len(steps) != len(rates):

        def origin(flag: str, given: object, values: Sequence) -> str:
            shown = " ".join(map(str, values))
            return shown if given is not None else f"{shown}: the paper's {args.toe_recipe} default, no {flag} given"

        raise UserError(
            f"--expansion-step and --keep-rate need the same number of values, got {len(steps)} "
            f"({origin('--expansion-step', args.expansion_step, steps)}) and {len(rates)} "
            f"({origin('--keep-rate', args.keep_rate, rates)})"
        )
    try:
        return ToESchedule(
            steps,
            rates,
            pick(args.initialization_keep_rate, paper.initialization_keep_rate),
            pick(args.expansion_multiple_stage, paper.expansion_multiple_stage),
        )
    except ValueError as error:
        raise UserError(flag_names(str(error))) from None


# the ToE library's parameter names (in its error messages) and the flags they come from
TOE_FLAGS = {
    "expansion_step": "--expansion-step",
    "keep_rate": "--keep-rate",
    "initialization_keep_rate": "--initialization-keep-rate",
    "expansion_multiple_stage": "--expansion-multiple-stage",
    "distance": "--distance",
    "seeding": "--seeding",
    "reduction": "--token-reduction",
}


def _toe_flag(match: re.Match) -> str:
    return TOE_FLAGS[match.group(1)]


def flag_names(message: str) -> str:
    """A ToE library error with its parameter names replaced by the command line's flags."""
    return re.sub(r"\b(" + "|".join(TOE_FLAGS) + r")\b", _toe_flag, message)


def token_select_from_args(args: argparse.Namespace) -> TokenSelect | None:
    """A :class:`TokenSelect` built from the flags, or None when ToE is off."""
    schedule = schedule_from_args(args)
    if schedule is None:
        return None
    return TokenSelect(
        schedule.expansion_step,
        schedule.keep_rate,
        schedule.initialization_keep_rate,
        schedule.expansion_multiple_stage,
        distance=args.distance,
        seeding=args.seeding,
        sparse_eval=args.sparse_eval,
        reduction=args.token_reduction,
    )
