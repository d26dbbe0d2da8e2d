"""The shared training engine: distributed set-up, precision, losses, checkpoints, logging, loops."""

from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .distributed import DistInfo, init_distributed
from .logger import RunLogger, read_log
from .loop import EpochStats, StepHooks, TrainingDiverged, evaluate, to_device, train_one_epoch, unwrap
from .precision import AMP_DTYPES, Precision
from .trainer import TrainingRun, checkpoint_state, evaluate_run, fit, restore, resume, set_toe_stage

__all__ = [
    "AMP_DTYPES",
    "DistInfo",
    "EpochStats",
    "Precision",
    "RunLogger",
    "StepHooks",
    "TrainingDiverged",
    "TrainingRun",
    "checkpoint_state",
    "evaluate",
    "evaluate_run",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "load_weights",
    "read_log",
    "restore",
    "resume",
    "save_checkpoint",
    "set_toe_stage",
    "to_device",
    "train_one_epoch",
    "unwrap",
]
