"""Continuing a run: what its checkpoints hold, finding the one to continue from, loading it back into the run
(log.txt cut back to the checkpoint's epoch and completed from it) and the line that says where training goes on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import UserError, state_dict_mismatch
from ..files import write_text_atomically
from .checkpoint import load_checkpoint, load_latest, remove_stale_temporaries
from .logger import read_log
from .run import TrainingRun, TrainState


def checkpoint_state(run: TrainingRun, epoch: int, record: dict | None, partial: dict | None = None) -> dict:
    """What a checkpoint holds after ``epoch`` (the last finished epoch; -1 before the first).

    ``record`` is that epoch's log record; ``partial`` describes the epoch in progress (mid-epoch).
    """
    parts, state = run.parts, run.state
    saved = {
        "model": parts.module.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "lr_scheduler": parts.lr_schedule.state_dict() if parts.lr_schedule is not None else None,
        "scaler": parts.precision.state_dict(),
        "epoch": epoch,
        "num_updates": state.num_updates,
        "best": dict(state.best),
        "args": run.settings.args,
        "identity": run.settings.identity,
        "log_record": json.dumps(record) if record is not None else None,
        "partial": partial,
    }
    if parts.model_ema is not None:
        saved["model_ema"] = parts.model_ema.module.state_dict()
    return saved


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint to continue from: its contents, its file, how it was named (e.g. "--resume FILE") and
    why an older copy was taken (None when it was not)."""

    state: dict
    path: Path
    source: str
    note: str | None = None


def find_checkpoint(
    resume: str | Path | None,
    auto: bool,
    output_dir: Path | None,
    flag: str = "--resume",
    auto_flag: str = "--auto-resume",
    clean: bool = True,
) -> FoundCheckpoint | None:
    """The checkpoint a run continues from: ``resume`` (the file ``flag`` names) if given, else with ``auto``
    the newest readable one of ``output_dir`` (checkpoint.pth, else checkpoint-prev.pth), else None.
    ``clean``: first delete the temporary files a killed writer left in ``output_dir`` (main process only)."""
    if resume:
        return FoundCheckpoint(load_checkpoint(resume, flag), Path(resume), f"{flag} {resume}")
    if not auto or output_dir is None:
        return None
    if clean:
        remove_stale_temporaries(output_dir)
    found = load_latest(output_dir)
    if found is None:
        return None
    state, path, note = found
    return FoundCheckpoint(state, path, f"{auto_flag} {path}", note)


def restore(run: TrainingRun, state: dict, source: str, weights_only: bool = False) -> None:
    """Load a checkpoint's ``state`` (see :func:`checkpoint_state`) into ``run``; ``source`` names it in errors.

    ``weights_only`` (evaluation, as DeiT's --eval): the model and EMA weights and the training position,
    not the optimizer, LR schedule or gradient scaler, and the run folder's log.txt is left as it is.
    Recipes that change the model between runs (e.g. EfficientTrain's resolution stages) adapt the
    state first, then call this.
    """
    parts = run.parts
    missing, unexpected = _keys_mismatch(parts.module, state["model"])
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(
            f"{source} was saved for a different model ({len(missing)} missing and {len(unexpected)} "
            f"unexpected weights, e.g. {example}); build the same model (architecture and --model-kwargs) as the run "
            "that wrote it"
        )
    try:
        parts.module.load_state_dict(state["model"])
    except RuntimeError as error:
        raise UserError(f"{source} was saved for a model of another shape: {state_dict_mismatch(error)}") from None
    if "optimizer" not in state:  # a bare model checkpoint: weights only
        return
    if not weights_only:
        try:
            parts.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as error:
            raise UserError(
                f"{source}: its optimizer state does not fit this run's optimizer ({error}); to start a new run "
                "from its weights, pass it as --finetune instead"
            ) from None
        if parts.lr_schedule is not None:
            parts.lr_schedule.load_state_dict(state.get("lr_scheduler"))
        parts.precision.load_state_dict(state.get("scaler") or {})
    if parts.model_ema is not None and "model_ema" in state:
        parts.model_ema.module.load_state_dict(state["model_ema"])
    run.state = TrainState(
        start_epoch=int(state["epoch"]) + 1,
        num_updates=int(state.get("num_updates", 0)),
        best=dict(state.get("best") or {}),
        last_record=json.loads(state["log_record"]) if state.get("log_record") else None,
        partial=state.get("partial"),
    )
    if run.settings.output_dir is not None and parts.dist.is_main and not weights_only:
        _restore_log(run.settings.output_dir, int(state["epoch"]), state.get("log_record"))


def resume_message(run: TrainingRun, found: FoundCheckpoint) -> str:
    """The line a recipe prints after restoring ``found``: where training continues."""
    partial = run.state.partial
    note = f"{found.note}\n" if found.note else ""
    if run.state.start_epoch >= run.settings.epochs:
        return note + f"{found.path} holds all {run.settings.epochs} epochs of this run: nothing left to train"
    where = f"epoch {run.state.start_epoch}" + (f", step {partial['stats']['steps']}" if partial else "")
    return note + f"resumed from {found.path}: continuing at {where}"


def _restore_log(output_dir: Path, epoch: int, record_json: str | None) -> None:
    """Make log.txt hold exactly the records of epochs <= ``epoch`` (the resumed checkpoint's), one per epoch in
    epoch order (of a record written twice, the later one; damaged lines dropped)."""
    kept = {r["epoch"]: r for r in read_log(output_dir) if isinstance(r.get("epoch"), int) and r["epoch"] < epoch}
    records = [kept[e] for e in sorted(kept)]
    if record_json:
        records.append(json.loads(record_json))
    write_text_atomically(output_dir / "log.txt", "".join(json.dumps(r) + "\n" for r in records))


def _keys_mismatch(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    """The weight names ``model`` expects that ``state`` lacks, and those ``state`` holds that it does not expect."""
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)
