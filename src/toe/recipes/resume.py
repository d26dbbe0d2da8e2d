"""Continuing a run from a checkpoint: the checks against its recorded flags (:mod:`.resume_check`),
the restore, and what ``--eval`` needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..engine import (
    FoundCheckpoint,
    TrainingRun,
    restore,
    resume_message,
)
from ..engine.checkpoint import FORMAT
from ..errors import UserError
from .resume_check import check_resume, dashed, differences, display, show


def resume_run(
    run: TrainingRun,
    found: FoundCheckpoint | None,
    adapt: Callable[[FoundCheckpoint], str | None] | None = None,
    free: Iterable[str] = (),
    spell: Callable[[str], str] = dashed,
) -> str | None:
    """Continue ``run`` from ``found`` (see :func:`toe.engine.find_checkpoint`), after ``adapt(found)`` changed the
    checkpoint's contents in place (returning a note to print, or None); returns the lines to print, or None
    for a fresh start.

    The flags, the number of processes and the training images must be those the checkpoint recorded
    (see :mod:`toe.recipes.resume_check`; ``free``: more flags that may differ, ``spell``: how a flag is
    written), unless ``--change-on-resume`` names them: then the LR schedule follows the new flags (as timm's
    train.py does on every resume) and the next log record lists the changes. A checkpoint of an upstream
    project is not compared (its flags mean other things); the line says so."""
    if found is None:
        return None
    changes = resume_changes(run.settings.args, run.settings.identity, found, free, spell)
    evaluating, epoch = bool(run.settings.args.get("eval")), found.state.get("epoch")
    if not evaluating and epoch is not None and int(epoch) + 1 > run.settings.epochs:
        raise UserError(
            f"{found.source} has finished epoch {epoch}, past the {run.settings.epochs} epochs of this run: "
            "it belongs to a longer run"
        )
    note = adapt(found) if adapt is not None else None
    if changes:
        found.state["lr_scheduler"] = None  # the schedule follows the new flags from here
    restore(run, found.state, found.source, weights_only=evaluating)
    if evaluating:
        where = f"evaluating {found.path}" + (f" (finished epoch {epoch})" if epoch is not None else "")
        return (f"{found.note}\n" if found.note else "") + where + (f"; {note}" if note else "")
    message = resume_message(run, found) + (f"; {note}" if note else "")
    if not written_here(found.state):
        message += "; not a checkpoint of this project: its flags are not compared with these"
    if changes:
        run.state.changes = changes
        if run.parts.lr_schedule is not None:
            run.parts.lr_schedule.place_at(run.state.start_epoch)
        listed = ", ".join(f"{display(key, spell)} {show(old)} -> {show(new)}" for key, (old, new) in changes.items())
        message += f"\nchanged on resume (--change-on-resume): {listed}; the LR schedule follows the new flags"
    return message


def resume_changes(
    current: dict,
    identity: dict,
    found: FoundCheckpoint,
    free: Iterable[str] = (),
    spell: Callable[[str], str] = dashed,
) -> dict:
    """The deliberate changes from the checkpoint ``found`` to a run of the flags ``current`` (plain values)
    on ``identity`` (processes, training images; ``{}``: not known yet); a :class:`UserError` for the others.
    Evaluation (``--eval``) and checkpoints of other projects (or without recorded flags) are not checked."""
    recorded = found.state.get("args")
    if current.get("eval") or not isinstance(recorded, dict) or not written_here(found.state):
        return {}
    changes = differences(recorded, current, free)
    saved_identity = found.state.get("identity") or {}
    for key, value in identity.items():
        if key in saved_identity and saved_identity[key] != value:
            changes[key] = (saved_identity[key], value)
    return check_resume(
        changes,
        current.get("change_on_resume") or (),
        found.source,
        mid_epoch=found.state.get("partial") is not None,
        spell=spell,
        can_change="change_on_resume" in current,
    )


def written_here(state: dict) -> bool:
    """Whether a loaded checkpoint was written by this project (its flags are ours, with our meanings)."""
    return state.get("format") == FORMAT


def check_eval_weights(found: FoundCheckpoint | None, finetune: str) -> None:
    """``--eval`` evaluates given weights (the checkpoint ``found`` or the ``--finetune`` ones), never a randomly
    initialised model."""
    if found is None and not finetune:
        raise UserError(
            "--eval needs weights to evaluate: --resume FILE, --finetune FILE, or --auto-resume with a checkpoint "
            "in the run folder"
        )
