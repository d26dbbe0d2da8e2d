"""What every recipe shares: the engine flags, fine-tuning, the output folder, and :func:`build_run`,
the one way a recipe turns its model, data and loss into a :class:`~toe.engine.TrainingRun`.

A recipe file keeps only what is its own: its flags, its model, its datasets and transforms, its loss
(and batch preparation), its LR schedule and the lines it prints. Everything else, from the EMA and the
optimizer to the loaders, precision, wrapping and the resume, is built here from the flags all recipes
share (``--batch-size``, ``--seed``, ``--model-ema*``, timm's optimizer flags, ``--clip-grad``, the
engine flags of :func:`add_engine_arguments`, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from ..data import build_eval_loader, build_train_loader
from ..data.image_files import dataset_identity
from ..data.loader import skipped_images
from ..engine import (
    DistInfo,
    Evaluation,
    FoundCheckpoint,
    LRSchedule,
    Precision,
    RunLogger,
    RunParts,
    RunSettings,
    StepHooks,
    TrainingRun,
    TrainState,
    fit,
    load_weights,
    restore,
    resume_message,
)
from ..engine.checkpoint import FORMAT
from ..engine.distributed import check_same_everywhere
from ..engine.loop import batches_to_train
from ..engine.precision import AMP_DTYPES
from ..engine.run_lock import lock_run_folder
from ..errors import UserError
from ..files import write_text_atomically
from ..integration import apply_toe
from ..models.factory import parse_model_kwargs
from ..options import may_change_on_resume
from ..token_select import TokenSelect
from .resume_check import check_resume, dashed, differences, display, show
from .summary import describe_toe


def add_engine_arguments(parser: argparse.ArgumentParser, upstream_switches: bool = True) -> None:
    """Flags of the shared engine that the upstream recipes lack (precision, compile, resume, ...).

    ``upstream_switches=False`` leaves out ``--no-amp``, ``--apex-amp`` and ``--auto-resume`` for a recipe
    that has its own switches for them (EfficientTrain's ``--use_amp`` and ``--auto_resume``).
    """
    group = parser.add_argument_group("engine")
    may_change_on_resume(
        group.add_argument(
            "--amp-dtype",
            choices=AMP_DTYPES,
            default="auto",
            help="autocast dtype when mixed precision is on: auto = fp16 with a gradient scaler on CUDA (as upstream), "
            "fp32 on the CPU; bf16 only when asked for",
        )
    )
    if upstream_switches:
        may_change_on_resume(group.add_argument("--no-amp", action="store_true", help="train in full fp32"))
        may_change_on_resume(
            group.add_argument(
                "--apex-amp",
                action="store_true",
                help="apex O1's precision: fp16 autocast with a gradient scaler on CUDA (native AMP, apex is not used)",
            )
        )
        may_change_on_resume(
            group.add_argument(
                "--auto-resume",
                action="store_true",
                help="resume from <output>/checkpoint.pth when it exists (checkpoint-prev.pth if it is damaged)",
            )
        )
        may_change_on_resume(
            group.add_argument(
                "--change-on-resume",
                nargs="+",
                default=[],
                metavar="FLAG",
                help="flags (e.g. epochs) that may differ from the resumed checkpoint's, on purpose: the LR schedule "
                "follows the new values and log.txt records the change (other differences are refused)",
            )
        )
    may_change_on_resume(group.add_argument("--compile", action="store_true", help="torch.compile the model"))
    may_change_on_resume(
        group.add_argument(
            "--save-every-steps",
            type=int,
            default=0,
            metavar="N",
            help="also write checkpoint.pth every N optimizer updates within an epoch (0: off)",
        )
    )
    may_change_on_resume(
        group.add_argument(
            "--skip-corrupt",
            action="store_true",
            help="replace unreadable images by the next readable one and count them, instead of stopping",
        )
    )
    may_change_on_resume(
        group.add_argument(
            "--synchronize-step",
            action="store_true",
            help="wait for the GPU at the end of every training step (exact per-step compute times, slower)",
        )
    )
    may_change_on_resume(group.add_argument("--no-progress", action="store_true", help="no progress bars"))
    group.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword arguments for timm.create_model, e.g. embed_dim=96 depth=6",
    )


def precision_from_args(args: argparse.Namespace, device: torch.device, amp: bool) -> Precision:
    """The run's precision: ``--amp-dtype`` when ``amp`` is on (fp16 with a scaler on CUDA by default, fp32 on
    the CPU), full fp32 otherwise. ``--apex-amp`` means fp16 (apex O1), so it refuses another ``--amp-dtype``."""
    if getattr(args, "apex_amp", False) and args.amp_dtype not in ("auto", "fp16"):
        raise UserError(
            f"--apex-amp means fp16 autocast (apex O1's precision); for --amp-dtype {args.amp_dtype} leave out "
            "--apex-amp"
        )
    return Precision.from_flag(device, args.amp_dtype, enabled=amp)


def mixup_active(args: argparse.Namespace) -> bool:
    """Whether the mixup/cutmix flags (the same in every recipe) ask for mixing."""
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


def mixup_from_args(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    """timm's Mixup from the mixup/cutmix flags (label smoothing included), or None when they ask for none."""
    if not mixup_active(args):
        return None
    return Mixup(
        mixup_alpha=args.mixup,
        cutmix_alpha=args.cutmix,
        cutmix_minmax=args.cutmix_minmax,
        prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob,
        mode=args.mixup_mode,
        label_smoothing=args.smoothing,
        num_classes=num_classes,
    )


def attach_toe(model: nn.Module, token_select: TokenSelect | None, model_name: str) -> nn.Module:
    """``apply_toe(model, token_select)`` when ToE is on; a model ToE cannot work with is a :class:`UserError`."""
    if token_select is not None:
        try:
            apply_toe(model, token_select)
        except (TypeError, ValueError) as error:
            raise UserError(f"--model {model_name} cannot train with ToE: {error}") from None
    return model


def check_model_kwargs(pairs: list[str], set_by: dict[str, tuple[str, object]]) -> None:
    """Refuse ``--model-kwargs`` that contradict a recipe flag: ``set_by`` maps a keyword the recipe passes
    to ``timm.create_model`` to (the flag, the value it passes; None: the flag was not given)."""
    for key, value in parse_model_kwargs(pairs).items():
        flag, flag_value = set_by.get(key, (None, None))
        if flag is not None and flag_value is not None and value != flag_value:
            raise UserError(
                f"--model-kwargs {key}={value} contradicts {flag} {flag_value}: leave {key} out, {flag} sets it"
            )


def epoch_schedule(args: argparse.Namespace, epoch_offset: int) -> Callable[[torch.optim.Optimizer, int], LRSchedule]:
    """timm's per-epoch schedule from the schedule flags (``--sched``, ``--warmup-epochs``, ...), stepped with
    the finished epoch + ``epoch_offset``; its length (with cool-down) becomes the run's epochs."""

    def build(optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> LRSchedule:
        scheduler, epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args))
        return LRSchedule(scheduler, epoch_offset=epoch_offset, epochs=epochs)

    return build


def build_run(
    args: argparse.Namespace,
    model: nn.Module,
    datasets: tuple[Dataset, Dataset | None],
    loss: nn.Module,
    dist: DistInfo,
    *,
    output_dir: Path | None,
    lr_schedule: Callable[[torch.optim.Optimizer, int], LRSchedule],
    amp: bool,
    num_workers: int,
    eval_batch_size: int,
    dist_eval: bool,
    epochs: int | None = None,
    accum_steps: int = 1,
    drop_last_group: bool = False,
    train_mode: bool = True,
    repeated_aug: bool = False,
    hooks: StepHooks | None = None,
    eval_prepare: Callable | None = None,
    evaluation: Evaluation | None = None,
    collate_fn: Callable | None = None,
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    extra_log: dict | None = None,
) -> TrainingRun:
    """The run of a recipe: its ``model`` (built, ToE attached, on the CPU), ``datasets`` (train, val or
    None), ``loss`` (``loss(inputs, outputs, targets)``) and what differs between recipes, with the rest
    built from the shared flags.

    Args:
        lr_schedule: ``(optimizer, updates per epoch) -> LRSchedule``, e.g. :func:`epoch_schedule`.
        amp: mixed precision on (``--amp-dtype`` picks the dtype).
        num_workers, eval_batch_size, dist_eval: loaders and evaluation (flag names differ per recipe).
        epochs: train epochs [start, epochs); None: the LR schedule's length.
        accum_steps, drop_last_group: batches per optimizer update, and whether a short last group of an
            epoch is left out (EfficientTrain) or makes a smaller update (timm).
        train_mode: False trains the model in eval mode, ToE still on (DeiT's --no-train-mode).
        repeated_aug: DeiT's repeated augmentation when distributed.
        hooks: batch preparation before the model call (device-side transforms, mixup, target building).
        eval_prepare: the same before evaluation. evaluation: the metrics (default: top-1/top-5).
        collate_fn: how samples form a batch (default: stacking), for both loaders.
        optimizer: ``model -> optimizer`` (default: timm's ``create_optimizer_v2`` from ``--opt``, ``--lr``,
            ``--weight-decay``, ...).
        extra_log: constant entries of every log record (``n_parameters`` is added).

    Flags read from ``args``: ``batch_size``, ``seed``, ``pin_mem``, the engine flags of
    :func:`add_engine_arguments`, and when present ``model_ema`` (with ``model_ema_decay`` and
    ``model_ema_force_cpu``), ``clip_grad``, ``clip_mode``, ``start_epoch`` (absent: no EMA, no clipping,
    epoch 0).
    """
    device = dist.device
    model.to(device)
    model_ema = None
    if getattr(args, "model_ema", False):
        model_ema = ModelEmaV3(
            model, decay=args.model_ema_decay, device=torch.device("cpu") if args.model_ema_force_cpu else None
        )
    optimizer = optimizer(model) if optimizer is not None else _timm_optimizer(model, args)
    train_set, val_set = datasets
    train_loader = build_train_loader(
        train_set,
        args.batch_size,
        dist,
        args.seed,
        num_workers,
        args.pin_mem,
        repeated_aug,
        args.skip_corrupt,
        collate_fn=collate_fn,
    )
    val_loader = None
    if val_set is not None:
        val_loader = build_eval_loader(
            val_set, eval_batch_size, dist, dist_eval, num_workers, args.pin_mem, args.skip_corrupt, collate_fn
        )
    updates_per_epoch = math.ceil(batches_to_train(len(train_loader), accum_steps, drop_last_group) / accum_steps)
    schedule = lr_schedule(optimizer, updates_per_epoch)
    settings = RunSettings(
        epochs=epochs if epochs is not None else schedule.epochs,
        seed=args.seed,
        output_dir=output_dir,
        args=plain_args(args),
        accum_steps=accum_steps,
        drop_last_group=drop_last_group,
        train_mode=train_mode,
        clip_grad=getattr(args, "clip_grad", None),
        clip_mode=getattr(args, "clip_mode", "norm"),
        dist_eval=dist_eval,
        synchronize_step=args.synchronize_step,
        show_progress=not args.no_progress,
        save_every_steps=args.save_every_steps,
        extra_log={"n_parameters": n_parameters(model), **(extra_log or {})},
        identity={"world_size": dist.world_size, "data": dataset_identity(train_set)},
    )
    check_same_everywhere(settings.identity["data"], dist, "training images")
    parts = RunParts(
        model=wrap_model(model, dist, args.compile),
        module=model,
        criterion=loss,
        optimizer=optimizer,
        precision=precision_from_args(args, device, amp),
        train_loader=train_loader,
        val_loader=val_loader,
        dist=dist,
        lr_schedule=schedule,
        model_ema=model_ema,
        hooks=hooks or StepHooks(),
        eval_prepare=eval_prepare,
        skipped_images=(lambda: skipped_images(train_loader)) if args.skip_corrupt else None,
    )
    if evaluation is not None:
        parts.evaluation = evaluation
    return TrainingRun(settings, parts, TrainState(start_epoch=getattr(args, "start_epoch", 0)))


def _timm_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """timm's optimizer from the optimizer flags; a mistake in them is a :class:`UserError`."""
    try:
        return create_optimizer_v2(model, **optimizer_kwargs(args))
    except (AssertionError, ValueError) as error:
        raise UserError(f"--opt {args.opt}: {error}") from None


def resume_run(
    run: TrainingRun,
    found: FoundCheckpoint | None,
    adapt: Callable[[dict], str | None] | None = None,
    free: Iterable[str] = (),
    spell: Callable[[str], str] = dashed,
) -> str | None:
    """Continue ``run`` from ``found`` (see :func:`toe.engine.find_checkpoint`), after ``adapt`` changed the
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
    note = adapt(found.state) if adapt is not None else None
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


def train_and_log(run: TrainingRun, log: RunLogger, header: str, toe_epochs: int | None = None) -> dict | None:
    """Print ``header`` and the ToE schedule (over ``toe_epochs``, default the run's), train, print the
    training time; returns the last epoch's log record."""
    log.print(header)
    log.print(describe_toe(run.parts.module, toe_epochs or run.settings.epochs))
    started = time.perf_counter()
    record = fit(run, log)
    log.print(f"training time {time.perf_counter() - started:.0f}s")
    log.close()
    return record


def load_finetune_weights(
    model: nn.Module,
    source: str,
    flag: str = "--finetune",
    frozen: Callable[[str], bool] | None = None,
    fresh_head: Callable[[dict], bool] | None = None,
) -> str:
    """Load pretrained weights for fine-tuning: heads of another class count are dropped and the
    position embedding is resampled to the model's grid, bicubic without antialiasing as the upstream recipes
    (``F.interpolate(mode="bicubic")``; the class and distillation positions kept). Returns a one-line report.
    ``frozen``: which parameter names will not train; a file that leaves one of them at its random
    initialisation is a :class:`UserError` (training on a random frozen backbone is never what was meant).
    ``fresh_head``: given the file's weights, whether to leave the heads at their initialisation even when
    they fit (a new task's classes)."""
    from timm.layers import resample_abs_pos_embed

    state = load_weights(source, flag)
    own = model.state_dict()
    drop_all = fresh_head is not None and fresh_head(state)
    dropped = [
        k
        for k in list(state)
        if k.startswith(("head", "head_dist", "aux_head")) and k in own and (drop_all or state[k].shape != own[k].shape)
    ]
    for key in dropped:
        del state[key]
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"],
            new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=prefix,
            interpolation="bicubic",
            antialias=False,
        )
    unknown = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        raise UserError(f"{flag} {source}: weights of another shape for {', '.join(mismatched[:3])}")
    missing, _ = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    random_frozen = [k for k in missing if frozen is not None and frozen(k)]
    if random_frozen:
        raise UserError(
            f"{flag} {source} does not hold {len(random_frozen)} of the frozen backbone's tensors "
            f"({', '.join(random_frozen[:3])}{', ...' if len(random_frozen) > 3 else ''}): they would stay random; "
            "give weights of this --model"
        )
    return (
        f"fine-tuning from {source}: {len(state) - len(unknown)} tensors loaded, "
        f"{len(dropped)} head tensors dropped, {len(missing)} left at init, {len(unknown)} ignored"
    )


def wrap_model(model: nn.Module, dist: DistInfo, compile_model: bool) -> nn.Module:
    """DDP (when distributed) then torch.compile (when asked): the module that runs the forward."""
    if dist.enabled:
        device_ids = [dist.local_rank] if dist.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        model = torch.compile(model)
    return model


def prepare_output_dir(output_dir: str | None, resuming: bool, dist: DistInfo, flag: str) -> Path | None:
    """Create the run folder and lock it for this process (main process; see :mod:`toe.engine.run_lock`);
    refuse a folder that another process uses, or that holds another run unless resuming."""
    if not output_dir:
        return None
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")

    def refuse_another_run() -> None:
        if not resuming and any((path / name).exists() for name in ("checkpoint.pth", "log.txt")):
            raise UserError(
                f"{flag} {path} already holds a run (checkpoint.pth / log.txt); pass --auto-resume to continue it "
                "or choose an empty folder"
            )

    if dist.is_main:
        make_folder(path, flag)
        lock_run_folder(path, flag, check=refuse_another_run)
    else:
        refuse_another_run()
    return path


def make_folder(path: Path, flag: str) -> None:
    """``mkdir -p path``; a folder that cannot be made (read-only or full file system, a file on the
    way, no permission) is a :class:`UserError` naming ``flag``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"{flag} {path} cannot be created ({error.strerror or error})") from None


def plain_args(args: argparse.Namespace) -> dict:
    """The flags as plain data (saved in checkpoints and args.json)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)}


def save_args(path: Path | None, args: argparse.Namespace, dist: DistInfo, name: str = "args.json") -> None:
    """Write the flags to ``path/name`` (main process, atomically)."""
    if path is not None and dist.is_main:
        write_text_atomically(path / name, json.dumps(plain_args(args), indent=2) + "\n")


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
