"""The record of a token-label folder: who made its labels, and for which images.

``generate_label`` writes ``LABELS/token_labels.json`` before the first label file::

    {"annotator": {"model": ..., "img_size": ..., "model_kwargs": {...}, "weights": ...},
     "data": {"folder": ..., "classes": K, "images": N, "fingerprint": ...}}

A later ``generate_label`` into the same folder must use the same annotator and images (else the
folder would mix two annotators' labels), and LV-ViT training checks that the labels were made for
its training images (same names in another data folder are not enough: the fingerprint reads the
first bytes of some images, see :func:`~toe.data.image_files.data_fingerprint`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..files import write_text_atomically
from .image_files import dataset_identity

RECORD_NAME = "token_labels.json"


def data_identity(dataset) -> dict:
    """What a label folder records about the images it labels (a class-folder dataset: ``root``, ``classes``,
    ``samples``): the folder, and the counts and fingerprint of :func:`~toe.data.image_files.dataset_identity`."""
    return {"folder": str(Path(dataset.root).resolve()), **dataset_identity(dataset)}


def read_record(label_root: Path) -> dict | None:
    """The folder's record, or None when it has none (labels of an older version or of upstream)."""
    path = Path(label_root) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not readable ({type(error).__name__}: {error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
        raise UserError(f"{path} is not a token-label record of this project")
    return record


def write_record(label_root: Path, record: dict) -> None:
    """Write the record atomically."""
    write_text_atomically(Path(label_root) / RECORD_NAME, json.dumps(record, indent=2) + "\n")


def describe_data(data: dict) -> str:
    return f"{data.get('images')} images of {data.get('classes')} classes in {data.get('folder')}"


def check_same_data(recorded: dict, current: dict, where: str) -> None:
    """A :class:`UserError` when ``recorded`` images (a record's ``data``) are not ``current``'s."""
    keys = ("classes", "images", "fingerprint")
    if any(recorded.get(key) != current[key] for key in keys):
        raise UserError(
            f"{where} was made for other images ({describe_data(recorded)}, fingerprint "
            f"{recorded.get('fingerprint')}), not for the {describe_data(current)} (fingerprint "
            f"{current['fingerprint']}); make labels for these images (ToE/lvvit/generate_label.py)"
        )
