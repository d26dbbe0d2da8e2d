"""The shared training engine: distributed set-up, precision, losses, checkpoints, logging, loops."""

from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .distributed import DistInfo, init_distributed
from .logger import RunLogger, read_log
from .loop import EpochStats, StepHooks, TrainingDiverged, evaluate, train_one_epoch, unwrap
from .precision import AMP_DTYPES, Precision
from .trainer import TrainingRun, evaluate_run, fit, resume, set_toe_stage

__all__ = [
    "AMP_DTYPES",
    "DistInfo",
    "EpochStats",
    "Precision",
    "RunLogger",
    "StepHooks",
    "TrainingDiverged",
    "TrainingRun",
    "evaluate",
    "evaluate_run",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "load_weights",
    "read_log",
    "resume",
    "save_checkpoint",
    "set_toe_stage",
    "train_one_epoch",
    "unwrap",
]
