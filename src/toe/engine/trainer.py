"""The epoch loop every recipe runs: ToE stage, train, LR step, evaluate, checkpoint, log.

Per epoch, in this order (so that a kill at any point loses at most the work since the last checkpoint):
1. seed the main-process RNGs for the epoch and start the sampler's epoch;
2. set the ToE stage of the live model (and of the EMA, which matters only with --sparse-eval);
3. train one epoch (every ``save_every_steps`` updates, write a mid-epoch checkpoint.pth that holds
   the epoch's partial statistics and the RNG states; the sampler skips what was done on resume),
   then tell the LR schedule the epoch ended;
4. evaluate the model and the EMA full-token (unless --sparse-eval);
5. write best_checkpoint.pth / best_ema_checkpoint.pth when the evaluation's metric improved, then
   checkpoint.pth (keeping the one it replaces as checkpoint-prev.pth, and holding this epoch's log
   record), then append the record to log.txt and TensorBoard.
Step 3 is :func:`train_one_epoch`, the run's settings and parts handed to :func:`.loop.train_steps`.
What a checkpoint holds and how a run continues from one (log.txt cut back to the checkpoint's epoch and
completed from it) is :mod:`.restore`; what an epoch's log record says is :mod:`.records`; the run itself is
:mod:`.run`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol, cast

from ..errors import UserError
from ..integration import has_toe
from ..token_select import TokenSelect
from .checkpoint import save_checkpoint
from .distributed import gather_objects
from .logger import RunLogger
from .loop import EpochStats, train_steps
from .preemption import Preempted, PreemptionWatch
from .records import always_kept_tokens, epoch_record, own_stats, step_tokens, summary_line
from .restore import checkpoint_state
from .rng import capture_rng, restore_rng, seed_epoch
from .run import TrainingRun


class _ResumableSampler(Protocol):
    """What the epoch loop asks of the train loader's sampler (build_train_loader's KeyedSampler)."""

    def set_epoch(self, epoch: int, skip: int = 0) -> None: ...


def set_toe_stage(run: TrainingRun, epoch: int) -> int | None:
    """Set the ToE stage of the model (and EMA) for ``epoch``; returns the model's stage or None."""
    parts = run.parts
    stage = None
    for model in (parts.module, getattr(parts.model_ema, "module", None)):
        if model is not None and has_toe(model):
            current = cast(TokenSelect, model.token_select).update_current_stage(epoch)
            stage = current if model is parts.module else stage
    return stage


def fit(run: TrainingRun, log: RunLogger) -> dict | None:
    """Train from ``run.state.start_epoch`` to ``run.settings.epochs``; returns the last epoch's log record.

    A SIGTERM or SIGUSR1 (a scheduler's pre-emption) ends training at the next optimizer update with a
    mid-epoch checkpoint, or after the epoch's checkpoint when it comes at an epoch's end: :class:`Preempted`
    (see :mod:`toe.engine.preemption`)."""
    with PreemptionWatch(run.parts.dist) as watch:
        return _fit(run, log, watch)


def _fit(run: TrainingRun, log: RunLogger, watch: PreemptionWatch) -> dict | None:
    settings, parts, state = run.settings, run.parts, run.state
    if parts.lr_schedule is not None:
        done = state.partial["stats"]["steps"] // settings.accum_steps if state.partial else 0
        parts.lr_schedule.start(state.start_epoch, state.num_updates, done)
    for epoch in range(state.start_epoch, settings.epochs):
        seed_epoch(settings.seed, epoch, parts.dist.rank)
        partial = state.partial if state.partial is not None and state.partial["epoch"] == epoch else None
        done = own_stats(partial, parts.dist.rank) if partial else None
        loader = parts.train_loader  # build_train_loader's: a KeyedSampler and a batch size
        sampler = cast(_ResumableSampler, loader.sampler)
        sampler.set_epoch(epoch, skip=done.steps * cast(int, loader.batch_size) if done else 0)
        if partial:
            if len(partial["rng"]) != parts.dist.world_size:
                raise UserError(
                    f"the checkpoint was written in the middle of epoch {epoch} by {len(partial['rng'])} "
                    f"process(es); resume it with the same number of processes (not {parts.dist.world_size})"
                )
            restore_rng(partial["rng"][parts.dist.rank])
        state.partial = None
        stage = set_toe_stage(run, epoch)
        stats = train_one_epoch(
            run, epoch, resume_from=done, on_update=functools.partial(_after_update, run, epoch, watch=watch, log=log)
        )
        state.num_updates = stats.updates
        if parts.lr_schedule is not None:
            parts.lr_schedule.on_epoch_end(epoch)
        record, improved = epoch_record(run, epoch, stage, stats, evaluate_run(run))
        _save_epoch(run, epoch, record, improved)
        log.log_epoch(record)
        log.print(summary_line(record, parts.evaluation.metric, always_kept_tokens(parts.module)))
        state.last_record = record
        if epoch + 1 < settings.epochs and watch.requested():
            _stop(run, log, watch, f"after epoch {epoch}", "checkpoint.pth holds it")
    return state.last_record


def train_one_epoch(
    run: TrainingRun,
    epoch: int,
    *,
    resume_from: EpochStats | None = None,
    on_update: Callable[[EpochStats], None] | None = None,
) -> EpochStats:
    """Train ``run`` for epoch ``epoch`` (:func:`~toe.engine.loop.train_steps` with the run's settings and
    parts), from ``run.state.num_updates`` updates; ``resume_from`` and ``on_update`` as there."""
    settings, parts = run.settings, run.parts
    return train_steps(
        parts.model,
        parts.criterion,
        parts.train_loader,
        parts.optimizer,
        parts.precision,
        parts.dist,
        epoch,
        num_updates=run.state.num_updates,
        accum_steps=settings.accum_steps,
        drop_last_group=settings.drop_last_group,
        train_mode=settings.train_mode,
        clip_grad=settings.clip_grad,
        clip_mode=settings.clip_mode,
        model_ema=parts.model_ema,
        hooks=parts.hooks,
        lr_schedule=parts.lr_schedule,
        tokens_of=lambda: step_tokens(parts.module),
        synchronize_step=settings.synchronize_step,
        show_progress=settings.show_progress,
        resume_from=resume_from,
        on_update=on_update,
    )


def _after_update(run: TrainingRun, epoch: int, stats: EpochStats, watch: PreemptionWatch, log: RunLogger) -> None:
    """After every update but an epoch's last: the mid-epoch checkpoint when one is due, and the stop on a
    scheduler's signal (with a mid-epoch checkpoint, due or not)."""
    saved = _save_mid_epoch(run, epoch, stats)
    if watch.requested():
        if not saved:
            _save_mid_epoch(run, epoch, stats, force=True)
        where = f"at epoch {epoch}, step {stats.steps}"
        _stop(run, log, watch, where, "checkpoint.pth holds the epoch so far" if run.settings.output_dir else "")


def _stop(run: TrainingRun, log: RunLogger, watch: PreemptionWatch, where: str, saved: str) -> None:
    message = f"pre-empted ({watch.signal_name}) {where}; " + (
        f"{saved}: continue with --auto-resume" if saved else "no --output_dir, nothing was saved"
    )
    log.print(message)
    log.close()
    raise Preempted(message)


def _save_mid_epoch(run: TrainingRun, epoch: int, stats: EpochStats, force: bool = False) -> bool:
    """Every ``save_every_steps`` updates (or when ``force``): checkpoint.pth with the unfinished epoch's state;
    returns whether one was due (a collective under torchrun: every process calls it at the same updates)."""
    settings, dist = run.settings, run.parts.dist
    updates_in_epoch = stats.updates - run.state.num_updates
    if not force and (not settings.save_every_steps or updates_in_epoch % settings.save_every_steps):
        return False
    rng = gather_objects(capture_rng(), dist)  # one entry per process
    rank_stats = gather_objects(dataclasses.asdict(stats), dist)  # each process's own sums (losses, tokens)
    if settings.output_dir is None or not dist.is_main:
        return True
    now = dataclasses.replace(run, state=dataclasses.replace(run.state, num_updates=stats.updates))
    partial = {"epoch": epoch, "stats": dataclasses.asdict(stats), "rng": rng, "rank_stats": rank_stats}
    save_checkpoint(
        checkpoint_state(now, epoch - 1, run.state.last_record, partial),
        settings.output_dir / "checkpoint.pth",
        keep_previous=True,
    )
    return True


def evaluate_run(run: TrainingRun) -> dict[str, float]:
    """Evaluate the model (and its EMA) on the validation loader; keys like log.txt's test_*."""
    settings, parts = run.settings, run.parts
    if parts.val_loader is None:
        return {}
    options: dict[str, Any] = dict(
        reduce=settings.dist_eval and parts.dist.enabled,
        prepare=parts.eval_prepare,
        show_progress=settings.show_progress,
    )
    evaluation, loader = parts.evaluation, parts.val_loader
    model = evaluation(parts.model, loader, parts.precision, parts.dist, **options)
    metrics = {f"test_{k}": v for k, v in model.items()}
    if parts.model_ema is not None:
        ema = evaluation(parts.model_ema.module, loader, parts.precision, parts.dist, description="eval ema", **options)
        metrics.update({f"test_ema_{k}": v for k, v in ema.items()})
    return metrics


def evaluate_checkpoint(run: TrainingRun) -> dict[str, float]:
    """Evaluate the weights ``run`` was restored from (a recipe's ``--eval``), ToE at the stage they were trained
    in (which matters with ``--sparse-eval``): that of the checkpoint's last finished epoch, or of its unfinished
    one for a mid-epoch checkpoint; for weights that are no checkpoint of a run, that of the epoch before
    ``start_epoch`` (epoch 0 at least)."""
    state = run.state
    set_toe_stage(run, state.start_epoch if state.partial else max(state.start_epoch - 1, 0))
    return evaluate_run(run)


def _save_epoch(run: TrainingRun, epoch: int, record: dict, improved: list[str]) -> None:
    output_dir = run.settings.output_dir
    if output_dir is None or not run.parts.dist.is_main:
        return
    state = checkpoint_state(run, epoch, record)
    for key in improved:
        name = "best_ema_checkpoint.pth" if key.startswith("test_ema_") else "best_checkpoint.pth"
        save_checkpoint(state, output_dir / name)
    save_checkpoint(state, output_dir / "checkpoint.pth", keep_previous=True)
