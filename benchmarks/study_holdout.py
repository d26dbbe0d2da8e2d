"""A second look at the study's finished cells: their final weights (model and EMA) evaluated on a held-out set.

A 500-image validation set measures top-1 to about ±1.7 points (one standard error at 83%), as much as the
differences the study looks for. ``study.py --holdout DIR`` evaluates every finished cell's final
checkpoint once on DIR's val/ split (e.g. 2000 more images from the demo generator with another seed),
through the recipe's own ``--eval``, and keeps the result in the cell as ``holdout.json``:

    {"data": "/abs/DIR", "images": 2000, "epoch": 35, "test_acc1": 97.1, "test_ema_acc1": 97.3}

A result is reused while it names the same DIR and the cell's last epoch; the report reads it from there.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

from toe.files import write_text_atomically

HOLDOUT_FILE = "holdout.json"
MODEL_LINE = re.compile(r"Accuracy of the network on the (\d+) test images: ([0-9.]+)%")
EMA_LINE = re.compile(r"Accuracy of the EMA on the \d+ test images: ([0-9.]+)%")
EPOCH_LINE = re.compile(r"^evaluating .* \(finished epoch (\d+)\)$", re.MULTILINE)


def read_holdout(folder: Path, data: Path | None, length: int) -> dict | None:
    """The cell's holdout result for ``data`` after its last epoch (``length`` - 1); None when there is none,
    or it is for other data or another epoch. ``data`` None: whatever data the result names."""
    path = folder / HOLDOUT_FILE
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict) or result.get("epoch") != length - 1:
        return None
    if data is not None and result.get("data") != str(data.resolve()):
        return None
    return result


def eval_command(cell_command: list[str], checkpoint: Path, data: Path, output_dir: Path) -> list[str]:
    """The cell's training command turned into an evaluation of ``checkpoint`` on ``data``'s val/ split (the
    later --data-path and --output_dir win; --auto-resume gives way to --resume)."""
    command = [flag for flag in cell_command if flag != "--auto-resume"]
    return [*command, "--data-path", str(data), "--output_dir", str(output_dir), "--eval", "--resume", str(checkpoint)]


def parse_eval_output(text: str) -> dict | None:
    """The checkpoint's epoch, the image count, model and EMA top-1 from the recipe's --eval lines; None when
    the epoch or the model's line is missing."""
    epoch, model = EPOCH_LINE.search(text), MODEL_LINE.search(text)
    if epoch is None or model is None:
        return None
    ema = EMA_LINE.search(text)
    return {
        "epoch": int(epoch[1]),
        "images": int(model[1]),
        "test_acc1": float(model[2]),
        "test_ema_acc1": float(ema[1]) if ema else None,
    }


def evaluate_cell(
    folder: Path, length: int, cell_command: list[str], data: Path, env: dict[str, str]
) -> tuple[dict | None, str]:
    """Evaluate the finished cell in ``folder`` on ``data`` and write its holdout.json.

    Returns (the result, "") or (None, the recipe's last output line when it failed)."""
    with tempfile.TemporaryDirectory(prefix="study-holdout-") as scratch:
        command = eval_command(cell_command, folder / "checkpoint.pth", data, Path(scratch) / "eval")
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    output = done.stdout + done.stderr
    result = parse_eval_output(done.stdout) if done.returncode == 0 else None
    if result is None:
        lines = [line for line in output.splitlines() if line.strip()]
        return None, lines[-1].strip() if lines else f"exit {done.returncode}"
    if result["epoch"] != length - 1:
        return None, f"{folder / 'checkpoint.pth'} holds epoch {result['epoch']}, not the last one ({length - 1})"
    result = {"data": str(data.resolve()), **result}
    write_text_atomically(folder / HOLDOUT_FILE, json.dumps(result) + "\n")
    return result, ""
