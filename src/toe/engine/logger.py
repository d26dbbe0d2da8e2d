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
    records: list[dict] = []
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


def read_epoch_records(output_dir: Path) -> list[dict]:
    """The epoch records of a run's log.txt for a reader that reports on them (``toe report``, ``toe plot``, the
    study): every line a JSON object with an integer ``epoch``, epochs strictly increasing. A damaged line or a
    repeated or out-of-order epoch is a :class:`UserError` naming the line, not a record counted twice or
    skipped without a word; an unfinished last line (a run writing it now) is left out. A file without a single
    epoch record (not a log of a run) gives []."""
    path = Path(output_dir) / "log.txt"
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.splitlines()
    parsed = [_epoch_record(line) for line in lines]
    if not any(parsed):
        return []
    records: list[dict] = []
    seen: dict[int, int] = {}
    for number, record in enumerate(parsed, start=1):
        epoch = record["epoch"] if record else None
        if record is None or epoch is None:
            if number == len(lines) and not data.endswith(b"\n"):
                break  # being written
            raise UserError(f"{path} line {number} is damaged (not an epoch record): repair or remove that line")
        if epoch in seen or (records and epoch < records[-1]["epoch"]):
            first = seen.get(epoch, number - 1)
            raise UserError(
                f"{path} line {number} records epoch {epoch} again or out of order (after line {first}): a log "
                "written twice; --auto-resume of the run rewrites it from its checkpoint"
            )
        seen[epoch] = number
        records.append(record)
    return records


def _epoch_record(line: bytes) -> dict | None:
    """The JSON object of a log line if it has an integer ``epoch``, else None."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return record if isinstance(epoch, int) and not isinstance(epoch, bool) else None


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
