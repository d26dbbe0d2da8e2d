"""Run logging on the main process: log.txt (one JSON line per epoch), TensorBoard scalars, console."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError

# log.txt keys written as TensorBoard scalars, under these tags
_SCALARS = {
    "train_loss": "train/loss",
    "train_lr": "train/lr",
    "test_loss": "test/loss",
    "test_acc1": "test/acc1",
    "test_acc5": "test/acc5",
    "test_ema_acc1": "test/ema_acc1",
    "toe_stage": "toe/stage",
    "toe_tokens": "toe/tokens",
    "train_compute_time": "time/train_compute_s",
    "epoch_time": "time/epoch_wall_s",
    "train_images_per_sec": "time/train_images_per_s",
}


class RunLogger:
    """Writes nothing unless ``enabled`` (rank 0) and ``output_dir`` is set."""

    def __init__(self, output_dir: Path | None, enabled: bool, tensorboard: bool = True) -> None:
        self.output_dir = output_dir if enabled else None
        self.enabled = enabled
        self.writer = None
        if self.output_dir is not None and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))

    def print(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def log_epoch(self, record: dict) -> None:
        """Append ``record`` to log.txt and its scalars to TensorBoard (step = epoch)."""
        if self.output_dir is None:
            return
        path = self.output_dir / "log.txt"
        try:
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
        except OSError as error:  # the epoch's checkpoint, written first, holds the record: a resume restores it
            raise UserError(
                f"cannot write {path} ({error.strerror or error}); once it can be written again, continue "
                "with --auto-resume"
            ) from None
        if self.writer is not None:
            for key, tag in _SCALARS.items():
                if isinstance(record.get(key), (int, float)):
                    self.writer.add_scalar(tag, record[key], record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_log(output_dir: Path) -> list[dict]:
    """The epoch records of a run's log.txt: its lines that are JSON objects (a torn last line, or a file
    that is not a log at all, gives fewer or none)."""
    records = []
    path = Path(output_dir) / "log.txt"
    if not path.is_file():
        return records
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def progress(iterable, total: int, description: str, enabled: bool):
    """A tqdm bar on the main process when stderr is a terminal (log files get the epoch lines only)."""
    return tqdm(
        iterable,
        total=total,
        desc=description,
        disable=not (enabled and sys.stderr.isatty()),
        dynamic_ncols=True,
        leave=False,
        file=sys.stderr,
    )
