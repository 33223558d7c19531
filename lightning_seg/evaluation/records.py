"""The files a test writes into the run folder (``trainer.default_root_dir``), and how to read them back.

- ``Records.PER_IMAGE`` (``per_image_metrics.csv``, names in :class:`lightning_seg.run.Records`): one row per test image and class, columns
  :data:`PER_IMAGE_COLUMNS`; a score with no value (a class absent from target and prediction under the
  default policy, or clDice of a class that is not curvilinear) is an empty cell.
- ``Records.EVALUATION`` (``test_evaluation.json``): the settings and library versions that produced the rows,
  the checkpoint tested, per-class summaries of the rows, and the calibration (ECE and per-bin curves).
- ``Records.RELIABILITY`` (``reliability.png``): the reliability diagram.

Each is written whole or not at all; a later test of the same run replaces them.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..atomic import write_text_atomic
from .policy import SCORES

#: ``id`` of the test sample, ``sample_group`` the image it belongs to (the id itself, or e.g. the section a
#: Drosophila tile was cut from: the unit that statistics resample), the class, the empty-class case, pixel
#: counts of target and prediction, and the scores.
PER_IMAGE_COLUMNS = ("id", "sample_group", "class", "case", "target_pixels", "pred_pixels", *SCORES)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def write_per_image(path: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with every key of :data:`PER_IMAGE_COLUMNS`) as the per-image CSV, atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PER_IMAGE_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row[column]) for column in PER_IMAGE_COLUMNS])
    return write_text_atomic(path, text.getvalue())


def read_per_image(path: str | Path) -> list[dict]:
    """The rows of a per-image CSV, with pixel counts as ``int`` and scores as ``float`` (NaN for empty cells).

    Raises:
        ValueError: if the header is not :data:`PER_IMAGE_COLUMNS`.
    """
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != PER_IMAGE_COLUMNS:
            raise ValueError(f"{path} is not a per-image metrics file: columns {reader.fieldnames}")
        rows = []
        for row in reader:
            for column in ("target_pixels", "pred_pixels"):
                row[column] = int(row[column])
            for score in SCORES:
                row[score] = float(row[score]) if row[score] else math.nan
            rows.append(row)
    return rows
