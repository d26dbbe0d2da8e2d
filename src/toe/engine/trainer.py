"""The epoch loop every recipe runs: ToE stage, train, LR step, evaluate, checkpoint, log.

Per epoch, in this order (so that a kill at any point loses at most the work since the last checkpoint):
1. seed the main-process RNGs for the epoch and start the sampler's epoch;
2. set the ToE stage of the live model (and of the EMA, which matters only with --sparse-eval);
3. train one epoch (every ``save_every_steps`` updates, write a mid-epoch checkpoint.pth that holds
   the epoch's partial statistics and the RNG states; the sampler skips what was done on resume),
   then step the epoch-wise LR schedule;
4. evaluate the model and the EMA full-token (unless --sparse-eval);
5. write best_checkpoint.pth / best_ema_checkpoint.pth when a top-1 improved, then checkpoint.pth
   (keeping the one it replaces as checkpoint-prev.pth, and holding this epoch's log record), then
   append the record to log.txt and TensorBoard.
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

from ..data.sampling import seed_epoch
from ..integration import has_toe
from ..options import UserError
from .checkpoint import load_checkpoint, load_latest, remove_stale_temporaries, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, gather_objects, replicas_in_sync
from .logger import RunLogger, read_log
from .loop import EpochStats, StepHooks, evaluate, train_one_epoch
from .precision import Precision
from .rng import capture_rng, restore_rng


@dataclass
class TrainingRun:
    """Everything the epoch loop needs; recipes build it from their flags."""

    model: nn.Module  # what runs the forward: possibly DDP- and/or torch.compile-wrapped
    module: nn.Module  # the plain model: state_dict, ToE stage
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object | None  # a timm scheduler
    precision: Precision
    train_loader: DataLoader
    val_loader: DataLoader | None
    dist: DistInfo
    epochs: int
    seed: int
    output_dir: Path | None
    args: dict  # plain flag values, saved in every checkpoint
    model_ema: object | None = None  # timm ModelEmaV3
    hooks: StepHooks = field(default_factory=StepHooks)
    eval_prepare: Callable | None = None
    accum_steps: int = 1
    clip_grad: float | None = None
    clip_mode: str = "norm"
    lr_step_offset: int = 0  # DeiT steps the schedule with step(epoch), timm's train.py with step(epoch + 1)
    sched_on_updates: bool = False  # per-iteration schedule (step_update) instead of per epoch
    dist_eval: bool = False
    show_progress: bool = True
    extra_log: dict = field(default_factory=dict)
    save_every_steps: int = 0  # mid-epoch checkpoint every N optimizer updates (0: only at epoch ends)
    skipped_images: Callable[[], int] | None = None  # unreadable images skipped so far (--skip-corrupt)
    start_epoch: int = 0
    num_updates: int = 0
    best: dict = field(default_factory=dict)
    last_record: dict | None = None
    partial: dict | None = None  # the unfinished epoch of a mid-epoch checkpoint being resumed


def set_toe_stage(run: TrainingRun, epoch: int) -> int | None:
    """Set the ToE stage of the model (and EMA) for ``epoch``; returns the model's stage or None."""
    stage = None
    for model in (run.module, getattr(run.model_ema, "module", None)):
        if model is not None and has_toe(model):
            current = model.token_select.update_current_stage(epoch)
            stage = current if model is run.module else stage
    return stage


def full_token_count(module: nn.Module) -> int | None:
    """Sequence length of the model without ToE: prefix tokens + patches (None if it has no patch embedding)."""
    patch_embed = getattr(module, "patch_embed", None)
    if patch_embed is None or not hasattr(patch_embed, "num_patches"):
        return None
    return int(getattr(module, "num_prefix_tokens", 0) + patch_embed.num_patches)


def tokens_fed_to_blocks(module: nn.Module) -> int | None:
    """Sequence length fed to blocks 1.. in the last training forward (full length without ToE)."""
    index = getattr(module, "toe_index", None)
    return int(index.shape[1]) if index is not None else full_token_count(module)


def checkpoint_state(run: TrainingRun, epoch: int, record: dict | None, partial: dict | None = None) -> dict:
    """What a checkpoint holds after ``epoch`` (the last finished epoch; -1 before the first).

    ``record`` is that epoch's log record; ``partial`` describes the epoch in progress (mid-epoch).
    """
    state = {
        "model": run.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict() if run.lr_scheduler is not None else None,
        "scaler": run.precision.state_dict(),
        "epoch": epoch,
        "num_updates": run.num_updates,
        "best": dict(run.best),
        "args": run.args,
        "log_record": json.dumps(record) if record is not None else None,
        "partial": partial,
    }
    if run.model_ema is not None:
        state["model_ema"] = run.model_ema.module.state_dict()
    return state


def resume(run: TrainingRun, path: str | Path, flag: str = "--resume") -> None:
    """Load a checkpoint into ``run`` and continue after its epoch."""
    restore(run, load_checkpoint(path, flag), f"{flag} {path}")


def restore(run: TrainingRun, state: dict, source: str) -> None:
    """Load a checkpoint's ``state`` (see :func:`checkpoint_state`) into ``run``; ``source`` names it in errors.

    Recipes that change the model between runs (e.g. EfficientTrain's resolution stages) adapt the
    state first, then call this.
    """
    missing, unexpected = _keys_mismatch(run.module, state["model"])
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise UserError(
            f"{source} was saved for a different model ({len(missing)} missing and {len(unexpected)} "
            f"unexpected weights, e.g. {example}); use the same --model as the run that wrote it"
        )
    try:
        run.module.load_state_dict(state["model"])
    except RuntimeError as error:
        detail = str(error).splitlines()[-1].strip()
        raise UserError(f"{source} was saved for a model of another shape: {detail}") from None
    if "optimizer" not in state:  # a bare model checkpoint: weights only
        return
    run.optimizer.load_state_dict(state["optimizer"])
    if run.lr_scheduler is not None and state.get("lr_scheduler"):
        run.lr_scheduler.load_state_dict(state["lr_scheduler"])
    run.precision.load_state_dict(state.get("scaler") or {})
    if run.model_ema is not None and "model_ema" in state:
        run.model_ema.module.load_state_dict(state["model_ema"])
    run.start_epoch = int(state["epoch"]) + 1
    run.num_updates = int(state.get("num_updates", 0))
    run.best = dict(state.get("best") or {})
    run.partial = state.get("partial")
    run.last_record = json.loads(state["log_record"]) if state.get("log_record") else None
    if run.output_dir is not None and run.dist.is_main:
        _restore_log(run.output_dir, int(state["epoch"]), state.get("log_record"))


def auto_resume(run: TrainingRun) -> str | None:
    """Continue from the newest readable checkpoint in ``run.output_dir`` (checkpoint.pth, else
    checkpoint-prev.pth), if any; returns a line to print, or None for a fresh start."""
    if run.output_dir is None:
        return None
    if run.dist.is_main:
        remove_stale_temporaries(run.output_dir)
    found = load_latest(run.output_dir)
    if found is None:
        return None
    state, path, note = found
    restore(run, state, f"--auto-resume {path}")
    where = f"epoch {run.start_epoch}" + (f", step {run.partial['stats']['steps']}" if run.partial else "")
    return (f"{note}\n" if note else "") + f"resumed from {path}: continuing at {where}"


def fit(run: TrainingRun, log: RunLogger) -> dict | None:
    """Train from ``run.start_epoch`` to ``run.epochs``; returns the last epoch's log record."""
    for epoch in range(run.start_epoch, run.epochs):
        seed_epoch(run.seed, epoch, run.dist.rank)
        partial = run.partial if run.partial is not None and run.partial["epoch"] == epoch else None
        done = EpochStats(**partial["stats"]) if partial else None
        run.train_loader.sampler.set_epoch(epoch, skip=done.steps * run.train_loader.batch_size if done else 0)
        if partial:
            if len(partial["rng"]) != run.dist.world_size:
                raise UserError(
                    f"the checkpoint was written in the middle of epoch {epoch} by {len(partial['rng'])} "
                    f"process(es); resume it with the same number of processes (not {run.dist.world_size})"
                )
            restore_rng(partial["rng"][run.dist.rank])
        run.partial = None
        stage = set_toe_stage(run, epoch)
        stats = train_one_epoch(
            run.model,
            run.criterion,
            run.train_loader,
            run.optimizer,
            run.precision,
            run.dist,
            epoch,
            num_updates=run.num_updates,
            accum_steps=run.accum_steps,
            clip_grad=run.clip_grad,
            clip_mode=run.clip_mode,
            model_ema=run.model_ema,
            hooks=run.hooks,
            tokens_of=lambda: tokens_fed_to_blocks(run.module),
            show_progress=run.show_progress,
            resume_from=done,
            on_update=lambda s, e=epoch: _save_mid_epoch(run, e, s),
        )
        run.num_updates = stats.updates
        if run.lr_scheduler is not None and not run.sched_on_updates:
            run.lr_scheduler.step(epoch + run.lr_step_offset)
        record, improved = _epoch_record(run, epoch, stage, stats)
        _save_epoch(run, epoch, record, improved)
        log.log_epoch(record)
        log.print(_summary_line(record))
        run.last_record = record
    return run.last_record


def _save_mid_epoch(run: TrainingRun, epoch: int, stats: EpochStats) -> None:
    """Every ``save_every_steps`` updates: checkpoint.pth with the unfinished epoch's state."""
    updates_in_epoch = stats.updates - run.num_updates
    if not run.save_every_steps or updates_in_epoch % run.save_every_steps:
        return
    rng = gather_objects(capture_rng(), run.dist)  # one entry per process
    if run.output_dir is None or not run.dist.is_main:
        return
    run_state = dataclasses.replace(run, num_updates=stats.updates)
    partial = {"epoch": epoch, "stats": dataclasses.asdict(stats), "rng": rng}
    save_checkpoint(
        checkpoint_state(run_state, epoch - 1, run.last_record, partial),
        run.output_dir / "checkpoint.pth",
        keep_previous=True,
    )


def evaluate_run(run: TrainingRun) -> dict[str, float]:
    """Evaluate the model (and its EMA) on the validation loader; keys like log.txt's test_*."""
    if run.val_loader is None:
        return {}
    common = dict(reduce=run.dist_eval and run.dist.enabled, prepare=run.eval_prepare, show_progress=run.show_progress)
    metrics = {
        f"test_{k}": v for k, v in evaluate(run.model, run.val_loader, run.precision, run.dist, **common).items()
    }
    if run.model_ema is not None:
        ema = evaluate(run.model_ema.module, run.val_loader, run.precision, run.dist, description="eval ema", **common)
        metrics.update({f"test_ema_{k}": v for k, v in ema.items()})
    return metrics


def _epoch_record(run: TrainingRun, epoch: int, stage: int | None, stats: EpochStats) -> tuple[dict, list[str]]:
    """The epoch's log record and the metrics (test_acc1, test_ema_acc1) that reached a new best."""
    loss_sum, images = all_reduce_sum([stats.loss_sum, stats.images], run.dist, run.dist.device)
    steps = all_reduce_sum([stats.steps], run.dist, run.dist.device)[0]
    record = {
        "epoch": epoch,
        "train_lr": stats.lr,
        "train_loss": loss_sum / steps,
        **evaluate_run(run),
        "toe_stage": stage,
        "token_reduction": run.module.token_select.reduction if has_toe(run.module) else None,
        "toe_tokens": stats.tokens,
        "full_tokens": full_token_count(run.module),
        "train_compute_time": stats.compute_time,
        "train_data_time": stats.data_time,
        "epoch_time": stats.wall_time,
        "train_images_per_sec": images / stats.wall_time,
        "train_images": int(images),
        **run.extra_log,
    }
    if run.skipped_images is not None:
        record["train_skipped_images"] = run.skipped_images()
    in_sync = replicas_in_sync(run.module, run.dist)
    if in_sync is not None:
        record["replicas_in_sync"] = in_sync
    improved = []
    for key in ("test_acc1", "test_ema_acc1"):
        if key in record:
            best_key = f"best_{key}"
            if record[key] > run.best.get(best_key, float("-inf")):
                run.best[best_key] = record[key]
                improved.append(key)
            record[best_key] = run.best[best_key]
    return record, improved


def _save_epoch(run: TrainingRun, epoch: int, record: dict, improved: list[str]) -> None:
    if run.output_dir is None or not run.dist.is_main:
        return
    state = checkpoint_state(run, epoch, record)
    names = {"test_acc1": "best_checkpoint.pth", "test_ema_acc1": "best_ema_checkpoint.pth"}
    for key in improved:
        save_checkpoint(state, run.output_dir / names[key])
    save_checkpoint(state, run.output_dir / "checkpoint.pth", keep_previous=True)


def _restore_log(output_dir: Path, epoch: int, record_json: str | None) -> None:
    """Make log.txt hold exactly the records of epochs <= ``epoch`` (the resumed checkpoint's)."""
    records = [r for r in read_log(output_dir) if r.get("epoch", -1) < epoch]
    if record_json:
        records.append(json.loads(record_json))
    temp = output_dir / ".log.txt.tmp"
    temp.write_text("".join(json.dumps(r) + "\n" for r in records))
    temp.replace(output_dir / "log.txt")


def _summary_line(record: dict) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record['train_loss']:.4f}", f"lr {record['train_lr']:.2e}"]
    if record.get("toe_stage") is not None:
        parts.append(f"ToE stage {record['toe_stage']} ({record['toe_tokens']} tokens)")
    if "test_acc1" in record:
        parts.append(f"top-1 {record['test_acc1']:.2f}%")
    if "test_ema_acc1" in record:
        parts.append(f"EMA top-1 {record['test_ema_acc1']:.2f}%")
    parts.append(f"train {record['train_compute_time']:.1f}s compute / {record['epoch_time']:.1f}s wall")
    return " | ".join(parts)


def _keys_mismatch(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)
