"""Evaluation beyond the dataset-level IoU: per-image scores under an explicit empty-class policy, boundary
(HD95, NSD) and topology (clDice) scores, calibration, and the test-time hook that writes them per run.

Pure functions and accumulators (:mod:`.metrics`, :mod:`.policy`, :mod:`.calibration`) are testable without
Lightning; :mod:`.test_time` connects them to :class:`~lightning_seg.SegmentationModule`'s test loop and
:mod:`.records` names the files it writes. Conventions: docs/evaluation.md.
"""

from .calibration import CalibrationHistogram, reliability_diagram
from .metrics import class_scores, cldice, image_scores, overlap_scores, surface_scores
from .policy import POLICY, SCORES, Case
from .records import read_per_image, write_per_image
from .test_time import EvaluationSettings, TestEvaluation, finish_test

__all__ = [
    "POLICY",
    "SCORES",
    "CalibrationHistogram",
    "Case",
    "EvaluationSettings",
    "TestEvaluation",
    "class_scores",
    "cldice",
    "finish_test",
    "image_scores",
    "overlap_scores",
    "read_per_image",
    "reliability_diagram",
    "surface_scores",
    "write_per_image",
]
