"""Per-image evaluation at test time: accumulate batches, then write the run's records and log the numbers.

:class:`SegmentationModule` owns one :class:`TestEvaluation` per test epoch: ``test_step`` feeds it each
batch's logits (nothing happens in training or validation), and :func:`finish_test` writes the records of
:mod:`~lightning_seg.evaluation.records` into ``trainer.default_root_dir`` and logs

- ``test/ece`` (top label) and ``test/ece_<class>`` (class-wise), in [0, 1];
- ``test/hd95_<class>``, ``test/nsd_<class>``, ``test/cldice_<class>`` (curvilinear classes only): means over
  the test images that have a value under the empty-class policy;

and, to every W&B logger, the reliability diagram (``test/reliability``) and the per-image rows as a table
(``test/per_image``). Per-image scores are computed on the CPU, batch by batch, as the batches arrive.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from torch import Tensor

from ..atomic import write_json_atomic
from ..prediction import predicted_classes
from ..run import Records, RunFolder
from .calibration import DEFAULT_BINS, CalibrationHistogram, reliability_diagram
from .metrics import HD_PERCENTILE, image_scores
from .policy import BOTH_EMPTY_OPTIONS, SCORES
from .records import PER_IMAGE_COLUMNS, write_per_image

#: Libraries whose versions are recorded with the scores they computed.
LIBRARIES = ("monai", "scikit-image", "torchmetrics", "torch", "scipy")
#: Scores logged as ``test/<score>_<class>`` (per-image Dice and IoU stay in the file: the dataset-level
#: ``test/iou_<class>`` and ``test/dice`` are the paper's numbers).
LOGGED_SCORES = ("hd95", "nsd", "cldice")


@dataclass(frozen=True)
class EvaluationSettings:
    """Options of the per-image evaluation (``--model.init_args.evaluation.<name>``).

    Args:
        nsd_tolerance: NSD tolerance τ in pixels: a boundary pixel within τ (≤) of the other boundary counts.
        both_empty: a class absent from target and prediction of an image: ``exclude`` (no value, left out
            of every mean) or ``perfect`` (Dice, IoU, NSD, clDice 1, HD95 0).
        calibration_bins: number of equal-width bins of the ECE and the reliability diagram.
    """

    nsd_tolerance: float = 2.0
    both_empty: Literal["exclude", "perfect"] = "exclude"
    calibration_bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if not self.nsd_tolerance >= 0:
            raise ValueError(f"evaluation.nsd_tolerance must be ≥ 0 pixels, got {self.nsd_tolerance}")
        if self.both_empty not in BOTH_EMPTY_OPTIONS:
            raise ValueError(f"evaluation.both_empty must be one of {BOTH_EMPTY_OPTIONS}, got {self.both_empty!r}")
        if self.calibration_bins < 1:
            raise ValueError(f"evaluation.calibration_bins must be ≥ 1, got {self.calibration_bins}")


def check_curvilinear_classes(curvilinear_classes: Sequence[str], class_names: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the option if a curvilinear class is not a class name."""
    unknown = [name for name in curvilinear_classes if name not in class_names]
    if unknown:
        raise ValueError(f"curvilinear_classes {unknown} are not among the class names {list(class_names)}")


#: The defaults, as one immutable value (the module's default argument).
DEFAULT_SETTINGS = EvaluationSettings()


class TestEvaluation:
    """Per-image rows and the calibration histogram of one test epoch.

    Args:
        class_names: the classes, in index order.
        curvilinear_classes: names of the classes that also get clDice.
        ignore_index: target value of unlabelled pixels, left out of every score.
        settings: :class:`EvaluationSettings`.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        class_names: Sequence[str],
        curvilinear_classes: Sequence[str] = (),
        ignore_index: int | None = None,
        settings: EvaluationSettings = DEFAULT_SETTINGS,
    ) -> None:
        check_curvilinear_classes(curvilinear_classes, class_names)
        self.class_names = list(class_names)
        self.curvilinear_classes = list(curvilinear_classes)
        self.ignore_index = ignore_index
        self.settings = settings
        self.rows: list[dict] = []
        self.calibration = CalibrationHistogram(len(self.class_names), self.settings.calibration_bins)

    def update(
        self,
        logits: Tensor,
        target: Tensor,
        ids: Sequence[str] | None = None,
        sample_group: Callable[[str], str] | None = None,
    ) -> None:
        """Add a batch: logits N×C×H×W, target N×H×W, the samples' ids (default: their position in the test
        order) and a function giving the image an id belongs to (default: the id)."""
        start = len({row["id"] for row in self.rows})
        ids = [f"{start + i:05d}" for i in range(len(target))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(target):
            raise ValueError(f"got {len(ids)} ids for a batch of {len(target)}")
        self.calibration.update(logits, target, self.ignore_index)
        preds = predicted_classes(logits.detach()).cpu().numpy()
        targets = target.detach().cpu().numpy()
        curvilinear = {self.class_names.index(name) for name in self.curvilinear_classes}
        for sample_id, pred, mask in zip(ids, preds, targets, strict=True):
            group = sample_group(sample_id) if sample_group else sample_id
            for row in image_scores(
                pred,
                mask,
                len(self.class_names),
                tolerance=self.settings.nsd_tolerance,
                ignore_index=self.ignore_index,
                curvilinear=curvilinear,
                both_empty=self.settings.both_empty,
            ):
                name = self.class_names[row.pop("class_index")]
                self.rows.append({"id": sample_id, "sample_group": group, "class": name, **row})

    def merge(self, other: TestEvaluation) -> None:
        """Add the rows and pixels of another process's evaluation; a sample seen twice (a distributed
        sampler pads the last batch with repeats) is kept once."""
        seen = {(row["id"], row["class"]) for row in self.rows}
        self.rows += [row for row in other.rows if (row["id"], row["class"]) not in seen]
        self.calibration.merge(other.calibration)

    def class_summary(self) -> dict[str, dict]:
        """Per class: the number of images in each empty-class case and, per score, mean, sample std and the
        number of images with a value."""
        summary = {}
        for name in self.class_names:
            rows = [row for row in self.rows if row["class"] == name]
            entry: dict = {"cases": dict(Counter(row["case"] for row in rows))}
            for score in SCORES:
                values = [row[score] for row in rows if not math.isnan(row[score])]
                entry[score] = {
                    "mean": statistics.fmean(values) if values else math.nan,
                    "std": statistics.stdev(values) if len(values) > 1 else math.nan,
                    "n": len(values),
                }
            summary[name] = entry
        return summary

    def logged_metrics(self) -> dict[str, float]:
        """``test/ece``, ``test/ece_<class>`` and the per-class means of :data:`LOGGED_SCORES`."""
        metrics = {"test/ece": self.calibration.ece()}
        for name, ece in zip(self.class_names, self.calibration.class_ece(), strict=True):
            metrics[f"test/ece_{name}"] = ece
        summary = self.class_summary()
        for score in LOGGED_SCORES:
            for name in self.class_names:
                if score == "cldice" and name not in self.curvilinear_classes:
                    continue
                metrics[f"test/{score}_{name}"] = summary[name][score]["mean"]
        return metrics

    def record(self) -> dict:
        """The contents of :data:`~lightning_seg.evaluation.records.EVALUATION` (without the run's context)."""
        return {
            "settings": {**asdict(self.settings), "hd_percentile": HD_PERCENTILE, "spacing": "1 pixel"},
            "libraries": {name: version(name) for name in LIBRARIES},
            "classes": self.class_names,
            "curvilinear_classes": self.curvilinear_classes,
            "images": len({row["id"] for row in self.rows}),
            "per_image_file": Records.PER_IMAGE,
            "per_class": self.class_summary(),
            "calibration": self.calibration.to_dict(self.class_names),
        }

    def write(self, folder: str | Path, context: dict | None = None) -> dict[str, Path]:
        """Write the per-image CSV, the evaluation record (with ``context``: e.g. the checkpoint tested) and
        the reliability diagram into ``folder``; return their paths."""
        folder = Path(folder)
        files = {
            "per_image": write_per_image(folder / Records.PER_IMAGE, self.rows),
            "evaluation": write_json_atomic(
                folder / Records.EVALUATION, _strict_json({**(context or {}), **self.record()})
            ),
            "reliability": reliability_diagram(
                self.calibration, self.class_names, folder / Records.RELIABILITY, title=f"reliability of {folder}"
            ),
        }
        return files


def _strict_json(value):
    """NaN as ``null``, so that the record is strict JSON."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _gather(evaluation: TestEvaluation, trainer) -> TestEvaluation:
    """Every process's rows and pixels merged into one evaluation (a no-op on one process)."""
    if trainer.world_size == 1:
        return evaluation
    import torch.distributed as dist

    parts: list = [None] * trainer.world_size
    dist.all_gather_object(parts, evaluation)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    return merged


def finish_test(module, evaluation: TestEvaluation) -> dict[str, Path]:
    """Log the test-time numbers through ``module`` and write the run's records (on global rank 0)."""
    from lightning.pytorch.loggers import WandbLogger

    trainer = module.trainer
    evaluation = _gather(evaluation, trainer)
    module.log_dict(evaluation.logged_metrics())
    if not trainer.is_global_zero:
        return {}
    folder = RunFolder(trainer.default_root_dir)
    # relative to the run folder, as in every record (lightning_seg.run): a moved folder keeps working
    context = {
        "ckpt_path": folder.relative(trainer.ckpt_path) if trainer.ckpt_path else None,
        "epochs": trainer.current_epoch,
    }
    files = evaluation.write(trainer.default_root_dir, context)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key="test/reliability", images=[str(files["reliability"])])
            columns = list(PER_IMAGE_COLUMNS)
            logger.log_table(
                key="test/per_image", columns=columns, data=[[r[c] for c in columns] for r in evaluation.rows]
            )
    return files
