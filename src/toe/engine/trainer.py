"""The epoch loop every recipe runs: ToE stage, train, LR step, evaluate, checkpoint, log.

A :class:`TrainingRun` keeps apart what never changes (:class:`RunSettings`), the collaborators the
recipe built (:class:`RunParts`: model, optimizer, loaders, loss, EMA, LR schedule, evaluation) and what
training changes (:class:`TrainState`, restored from checkpoints).

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
On resume, log.txt is cut back to the checkpoint's epoch and completed from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import UserError, state_dict_mismatch
from ..files import write_text_atomically
from ..integration import has_toe, prefix_tokens
from .checkpoint import load_checkpoint, load_latest, remove_stale_temporaries, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, gather_objects, replicas_in_sync
from .evaluation import Classification, Evaluation
from .logger import RunLogger, read_log
from .loop import EpochStats, StepHooks, train_one_epoch
from .lr import LRSchedule
from .memory import mebibytes
from .precision import Precision
from .preemption import Preempted, PreemptionWatch
from .rng import capture_rng, restore_rng, seed_epoch


@dataclass(frozen=True)
class RunSettings:
    """What stays fixed for the whole run (from the flags)."""

    epochs: int  # train epochs [start, epochs)
    seed: int = 0
    output_dir: Path | None = None  # nothing is written when None
    args: dict = field(default_factory=dict)  # plain flag values, saved in every checkpoint
    accum_steps: int = 1  # batches per optimizer update
    drop_last_group: bool = False  # leave out a short last accumulation group (EfficientTrain), see loop.py
    train_mode: bool = True  # False: the model trains in eval mode, ToE still on (DeiT's --no-train-mode)
    clip_grad: float | None = None
    clip_mode: str = "norm"
    dist_eval: bool = False  # each process evaluates a shard, the numbers are summed
    synchronize_step: bool = False  # wait for the device after every step (exact per-step compute time)
    show_progress: bool = True
    save_every_steps: int = 0  # mid-epoch checkpoint every N optimizer updates (0: only at epoch ends)
    extra_log: dict = field(default_factory=dict)  # constant entries of every log record
    identity: dict = field(default_factory=dict)  # what the run trains on (processes, images), checked on resume


@dataclass
class RunParts:
    """The collaborators a recipe builds (see ``toe.recipes.build.build_run``) and the engine uses."""

    model: nn.Module  # what runs the forward: possibly DDP- and/or torch.compile-wrapped
    module: nn.Module  # the plain model: state_dict, ToE stage
    criterion: nn.Module  # criterion(inputs, outputs, targets) -> loss
    optimizer: torch.optim.Optimizer
    precision: Precision
    train_loader: DataLoader
    val_loader: DataLoader | None
    dist: DistInfo
    lr_schedule: LRSchedule | None = None
    model_ema: object | None = None  # timm ModelEmaV3
    hooks: StepHooks = field(default_factory=StepHooks)
    eval_prepare: Callable | None = None  # (images, targets) -> (images, targets) before evaluation
    evaluation: Evaluation = field(default_factory=Classification)
    skipped_images: Callable[[], int] | None = None  # unreadable images skipped so far (--skip-corrupt)


@dataclass
class TrainState:
    """What training changes: saved in every checkpoint and restored from it."""

    start_epoch: int = 0  # the next epoch to train
    num_updates: int = 0  # optimizer updates since the start of training
    best: dict = field(default_factory=dict)  # best_test_<metric> values so far
    last_record: dict | None = None  # the last finished epoch's log record
    partial: dict | None = None  # the unfinished epoch of a mid-epoch checkpoint being resumed
    changes: dict | None = None  # flags changed on purpose when resuming, for the next log record


@dataclass
class TrainingRun:
    """Everything the epoch loop needs."""

    settings: RunSettings
    parts: RunParts
    state: TrainState = field(default_factory=TrainState)


def set_toe_stage(run: TrainingRun, epoch: int) -> int | None:
    """Set the ToE stage of the model (and EMA) for ``epoch``; returns the model's stage or None."""
    parts = run.parts
    stage = None
    for model in (parts.module, getattr(parts.model_ema, "module", None)):
        if model is not None and has_toe(model):
            current = model.token_select.update_current_stage(epoch)
            stage = current if model is parts.module else stage
    return stage


EPOCH_STAT_FIELDS = {f.name for f in dataclasses.fields(EpochStats)}  # checkpoints of older versions hold others


def _own_stats(partial: dict, rank: int) -> EpochStats:
    """This process's statistics of a mid-epoch checkpoint's unfinished epoch (older checkpoints hold only the
    main process's, which every process then continues from)."""
    stats = (partial.get("rank_stats") or [partial["stats"]] * (rank + 1))[rank]
    return EpochStats(**{k: v for k, v in stats.items() if k in EPOCH_STAT_FIELDS})


def full_token_count(module: nn.Module) -> int | None:
    """Sequence length of a ViT without ToE: prefix (and prompt) tokens + patches; None for a model without a
    fixed patch grid (YOLOS reports its own per forward, :func:`step_tokens`)."""
    patch_embed = getattr(module, "patch_embed", None)
    if patch_embed is None or not hasattr(patch_embed, "num_patches"):
        return None
    return int(prefix_tokens(module) + patch_embed.num_patches)


def step_tokens(module: nn.Module) -> tuple[float, float] | None:
    """(tokens fed to blocks 1.., tokens without ToE) of the model's last training forward: a model whose input
    size changes per batch (YOLOS) reports them (``last_token_counts()``); for a ViT, ToE's last index tells."""
    if hasattr(module, "last_token_counts"):
        return module.last_token_counts()
    full = full_token_count(module)
    if full is None:
        return None
    index = module.token_select.last_index if has_toe(module) else None
    return (int(index.shape[1]) if index is not None else full, full)


def mean_tokens(total: float, steps: int) -> float | int | None:
    """An epoch's mean sequence length: a whole number when every step had the same, else to 0.1 token."""
    if not steps:
        return None
    mean = round(total / steps, 1)
    return int(mean) if mean.is_integer() else mean


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
            f"unexpected weights, e.g. {example}); use the same --model as the run that wrote it"
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
        done = _own_stats(partial, parts.dist.rank) if partial else None
        loader = parts.train_loader
        loader.sampler.set_epoch(epoch, skip=done.steps * loader.batch_size if done else 0)
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
            parts.model,
            parts.criterion,
            loader,
            parts.optimizer,
            parts.precision,
            parts.dist,
            epoch,
            num_updates=state.num_updates,
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
            resume_from=done,
            on_update=lambda s, e=epoch: _after_update(run, e, s, watch, log),
        )
        state.num_updates = stats.updates
        if parts.lr_schedule is not None:
            parts.lr_schedule.on_epoch_end(epoch)
        record, improved = _epoch_record(run, epoch, stage, stats)
        _save_epoch(run, epoch, record, improved)
        log.log_epoch(record)
        log.print(_summary_line(record, parts.evaluation.metric, always_kept_tokens(parts.module)))
        state.last_record = record
        if epoch + 1 < settings.epochs and watch.requested():
            _stop(run, log, watch, f"after epoch {epoch}", "checkpoint.pth holds it")
    return state.last_record


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
    options = dict(
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


def _epoch_record(run: TrainingRun, epoch: int, stage: int | None, stats: EpochStats) -> tuple[dict, list[str]]:
    """The epoch's log record and the keys (test_<metric>, test_ema_<metric>) that reached a new best."""
    parts, dist = run.parts, run.parts.dist
    loss_sum, images = all_reduce_sum([stats.loss_sum, stats.images], dist, dist.device)
    steps = all_reduce_sum([stats.steps], dist, dist.device)[0]
    fed, full, token_steps = all_reduce_sum([stats.tokens_fed, stats.tokens_full, stats.token_steps], dist, dist.device)
    record = {
        "epoch": epoch,
        "train_lr": stats.lr,
        "train_loss": loss_sum / steps,
        **evaluate_run(run),
        "toe_stage": stage,
        "token_reduction": parts.module.token_select.reduction if has_toe(parts.module) else None,
        "toe_tokens": mean_tokens(fed, int(token_steps)),
        "full_tokens": mean_tokens(full, int(token_steps)),
        "train_compute_time": stats.compute_time,
        "train_memory_mb": mebibytes(stats.memory),
        "train_data_time": stats.data_time,
        "epoch_time": stats.wall_time,
        "train_images_per_sec": images / stats.wall_time,
        "train_images": int(images),
        **run.settings.extra_log,
    }
    if parts.skipped_images is not None:
        record["train_skipped_images"] = parts.skipped_images()
    if run.state.changes:  # flags changed on purpose when this run was resumed: said once, in the next record
        record["resume_changes"] = {key: list(change) for key, change in run.state.changes.items()}
        run.state.changes = None
    in_sync = replicas_in_sync(parts.module, dist)
    if in_sync is not None:
        record["replicas_in_sync"] = in_sync
    improved = []
    best = run.state.best
    metric = parts.evaluation.metric
    for key in (f"test_{metric}", f"test_ema_{metric}"):
        if key in record:
            best_key = f"best_{key}"
            if record[key] > best.get(best_key, float("-inf")):
                best[best_key] = record[key]
                improved.append(key)
            record[best_key] = best[best_key]
    return record, improved


def _save_epoch(run: TrainingRun, epoch: int, record: dict, improved: list[str]) -> None:
    output_dir = run.settings.output_dir
    if output_dir is None or not run.parts.dist.is_main:
        return
    state = checkpoint_state(run, epoch, record)
    for key in improved:
        name = "best_ema_checkpoint.pth" if key.startswith("test_ema_") else "best_checkpoint.pth"
        save_checkpoint(state, output_dir / name)
    save_checkpoint(state, output_dir / "checkpoint.pth", keep_previous=True)


def _restore_log(output_dir: Path, epoch: int, record_json: str | None) -> None:
    """Make log.txt hold exactly the records of epochs <= ``epoch`` (the resumed checkpoint's), one per epoch in
    epoch order (of a record written twice, the later one; damaged lines dropped)."""
    kept = {r["epoch"]: r for r in read_log(output_dir) if isinstance(r.get("epoch"), int) and r["epoch"] < epoch}
    records = [kept[e] for e in sorted(kept)]
    if record_json:
        records.append(json.loads(record_json))
    write_text_atomically(output_dir / "log.txt", "".join(json.dumps(r) + "\n" for r in records))


def always_kept_tokens(module: nn.Module) -> int:
    """The tokens ToE never reduces: the prefix (class, distillation) tokens, VPT's prompts and YOLOS's [DET]
    tokens."""
    return prefix_tokens(module) + getattr(module, "num_extra_tokens", 0)


def _summary_line(record: dict, metric: str = "acc1", prefix: int = 1) -> str:
    """The epoch's console line; token counts are patch tokens (``prefix`` tokens are always kept too;
    models whose batches differ in size log epoch means, shown to a tenth)."""
    parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}", f"lr {record['train_lr']:.2e}"]
    if record.get("toe_stage") is not None:
        kept, total = (round(record[key] - prefix, 1) for key in ("toe_tokens", "full_tokens"))
        parts.append(f"ToE stage {record['toe_stage']} ({kept:g} of {total:g} patch tokens)")
    name = "top-1" if metric == "acc1" else metric
    unit = "%" if metric == "acc1" else ""
    if f"test_{metric}" in record:
        parts.append(f"{name} {record[f'test_{metric}']:.2f}{unit}")
    if f"test_ema_{metric}" in record:
        parts.append(f"EMA {name} {record[f'test_ema_{metric}']:.2f}{unit}")
    parts.append(f"train {record['train_compute_time']:.1f}s compute / {record['epoch_time']:.1f}s wall")
    return " | ".join(parts)


def _keys_mismatch(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)
