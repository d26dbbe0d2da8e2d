"""A resume may not silently change the run: the new flags against the ones its checkpoint recorded.

Resuming with another ``--batch-size`` makes a mid-epoch checkpoint skip the wrong samples, other ToE
flags make the report show stages that never happened, another ``--epochs`` moves the LR schedule,
another model, seed, number of processes or data set trains something else. Every recorded flag is
compared, except those that say where and how the run executes rather than what it trains (paths,
workers, device, progress bars, checkpoint interval, ...): each recipe marks them where it defines them
(:func:`toe.options.may_change_on_resume`) and passes them as ``free``. The number of processes and the
training images (class list, image count, fingerprint) are compared too.

A difference is refused with one line listing each flag, its recorded and its new value, unless the
flag is named in ``--change-on-resume`` (a deliberate change, e.g. extending ``--epochs``): then the run
continues with the new value and the change is printed and written into the next log record
(``resume_changes``). Changes that would make a mid-epoch checkpoint resume at the wrong sample
(batch size, accumulation, seed, number of processes, data) are refused even then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import UserError

# changes that move the samples of an epoch: a mid-epoch checkpoint cannot continue with them
SAMPLE_ORDER = frozenset({"batch_size", "accum_iter", "update_freq", "seed", "repeated_aug", "world_size", "data"})


def dashed(key: str) -> str:
    """``batch_size`` -> ``--batch-size`` (the DeiT and LV-ViT spelling)."""
    return f"--{key.replace('_', '-')}"


def flag_key(name: str) -> str:
    """``--batch-size`` / ``batch-size`` / ``batch_size`` -> ``batch_size``."""
    return name.lstrip("-").replace("-", "_")


def differences(recorded: dict, current: dict, free: Iterable[str] = ()) -> dict[str, tuple]:
    """``{key: (recorded value, current value)}`` for every flag of ``current`` recorded with another value
    (flags in ``free`` aside; a flag the checkpoint does not record is not compared)."""
    skip = set(free)
    return {
        key: (recorded[key], value)
        for key, value in current.items()
        if key not in skip and key in recorded and _normal(recorded[key]) != _normal(value)
    }


def check_resume(
    changes: dict[str, tuple],
    allowed: Iterable[str],
    source: str,
    mid_epoch: bool,
    spell: Callable[[str], str] = dashed,
    can_change: bool = True,
) -> dict[str, tuple]:
    """Refuse ``changes`` (see :func:`differences`, plus ``world_size`` / ``data`` entries for the number of
    processes and the training images) that are not ``allowed``; returns the allowed ones, to print and log.
    ``source`` names the checkpoint; ``can_change``: the recipe has ``--change-on-resume``."""
    allowed = {flag_key(name) for name in allowed}
    refused = {key: change for key, change in changes.items() if key not in allowed}
    if mid_epoch:
        refused |= {key: change for key, change in changes.items() if key in SAMPLE_ORDER}
    if not refused:
        return changes
    listed = "; ".join(f"{display(key, spell)} {show(old)} (now {show(new)})" for key, (old, new) in refused.items())
    if mid_epoch and any(key in SAMPLE_ORDER for key in refused):
        advice = "a checkpoint written in the middle of an epoch continues only with the recorded values"
    elif can_change:
        advice = f"resume with the recorded values, or pass --change-on-resume {' '.join(refused)} to change them"
    else:
        advice = "resume with the recorded values"
    raise UserError(f"{source} was written by a run with other settings: {listed}; {advice}")


def display(key: str, spell: Callable[[str], str] = dashed) -> str:
    """How a compared entry is named in messages."""
    return {"world_size": "processes", "data": "training images"}.get(key) or spell(key)


def show(value) -> str:
    """A recorded value as the messages write it."""
    if isinstance(value, dict):  # the training images
        fingerprint = f", fingerprint {value['fingerprint']}" if "fingerprint" in value else ""
        return f"{value.get('images')} images of {value.get('classes')} classes{fingerprint}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "(none)"
    return "(none)" if value is None or value == "" else str(value)


def _normal(value):
    """Lists and tuples compare alike (JSON and YAML give lists, argparse may give tuples)."""
    return [_normal(v) for v in value] if isinstance(value, (list, tuple)) else value
