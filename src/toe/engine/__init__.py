"""The shared training engine: distributed set-up, precision, losses, checkpoints, logging, loops.

It imports nothing from the data, the recipes or the command line; recipes build a :class:`TrainingRun`
(``toe.recipes.build.build_run``, see :mod:`.run`), continue it from a checkpoint (:mod:`.restore`) and call
:func:`fit` (:mod:`.trainer`). :func:`train_one_epoch` trains a run for one epoch, :func:`train_steps` one
pass over a loader with its collaborators passed one by one.
"""

from .checkpoint import load_checkpoint, load_weights, save_checkpoint
from .distributed import DistInfo, init_distributed
from .evaluation import Classification, Evaluation, evaluate
from .logger import RunLogger, read_epoch_records, read_log
from .loop import EpochStats, StepHooks, TrainingDiverged, train_steps
from .lr import LRSchedule
from .precision import AMP_DTYPES, Precision
from .restore import FoundCheckpoint, checkpoint_state, find_checkpoint, restore, resume_message
from .run import RunParts, RunSettings, TrainingRun, TrainState
from .trainer import evaluate_checkpoint, evaluate_run, fit, set_toe_stage, train_one_epoch
from .transfer import to_device, unwrap

__all__ = [
    "AMP_DTYPES",
    "Classification",
    "DistInfo",
    "EpochStats",
    "Evaluation",
    "FoundCheckpoint",
    "LRSchedule",
    "Precision",
    "RunLogger",
    "RunParts",
    "RunSettings",
    "StepHooks",
    "TrainState",
    "TrainingDiverged",
    "TrainingRun",
    "checkpoint_state",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_run",
    "find_checkpoint",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "load_weights",
    "read_log",
    "read_epoch_records",
    "restore",
    "resume_message",
    "save_checkpoint",
    "set_toe_stage",
    "to_device",
    "train_one_epoch",
    "train_steps",
    "unwrap",
]
