"""What an epoch's log record says: losses, evaluation, ToE stage and token counts, times, memory, best
metrics; the token accounting behind its counts and the console line that sums it up."""

from __future__ import annotations

import dataclasses
from typing import cast

from torch import nn

from ..integration import SelectsTokensItself, has_toe, prefix_tokens
from ..token_select import TokenSelect
from .distributed import all_reduce_sum, replicas_in_sync
from .loop import EpochStats
from .memory import mebibytes
from .run import TrainingRun

EPOCH_STAT_FIELDS = {f.name for f in dataclasses.fields(EpochStats)}  # checkpoints of older versions hold others


def own_stats(partial: dict, rank: int) -> EpochStats:
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
        return cast(SelectsTokensItself, module).last_token_counts()
    full = full_token_count(module)
    if full is None:
        return None
    index = cast(TokenSelect, module.token_select).last_index if has_toe(module) else None
    return (int(index.shape[1]) if index is not None else full, full)


def mean_tokens(total: float, steps: int) -> float | int | None:
    """An epoch's mean sequence length: a whole number when every step had the same, else to 0.1 token."""
    if not steps:
        return None
    mean = round(total / steps, 1)
    return int(mean) if mean.is_integer() else mean


def always_kept_tokens(module: nn.Module) -> int:
    """The tokens ToE never reduces: the prefix (class, distillation) tokens, VPT's prompts and YOLOS's [DET]
    tokens."""
    return prefix_tokens(module) + getattr(module, "num_extra_tokens", 0)


def epoch_record(
    run: TrainingRun, epoch: int, stage: int | None, stats: EpochStats, metrics: dict[str, float]
) -> tuple[dict, list[str]]:
    """The epoch's log record, with the evaluation's ``metrics`` (test_*), and the keys (test_<metric>,
    test_ema_<metric>) that reached a new best (kept in ``run.state.best``)."""
    parts, dist = run.parts, run.parts.dist
    loss_sum, images = all_reduce_sum([stats.loss_sum, stats.images], dist, dist.device)
    steps = all_reduce_sum([stats.steps], dist, dist.device)[0]
    fed, full, token_steps = all_reduce_sum([stats.tokens_fed, stats.tokens_full, stats.token_steps], dist, dist.device)
    record = {
        "epoch": epoch,
        "train_lr": stats.lr,
        "train_loss": loss_sum / steps,
        **metrics,
        "toe_stage": stage,
        "token_reduction": cast(TokenSelect, parts.module.token_select).reduction if has_toe(parts.module) else None,
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


def summary_line(record: dict, metric: str = "acc1", prefix: int = 1) -> str:
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
