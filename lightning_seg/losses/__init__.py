"""Segmentation losses behind one input contract and one registry; see :mod:`.base`."""

from .base import (
    EPS,
    LOSSES,
    LossParts,
    LossTerms,
    SegmentationLoss,
    build_loss,
    check_inputs,
    compute_terms,
    register_loss,
)
from .boundary import Boundary, BoundaryDoU, HausdorffDT, distance_transform_edt
from .compound import CERegionKL, CERegionL1, Combo, ExpLog, GDLBoundary, UnifiedFocal
from .paper import (
    Additive,
    CAMLFixedR,
    ConfidenceAdaptiveMultiplicative,
    CrossEntropy,
    Dice,
    Multiplicative,
)
from .pixel import Focal, TopK, WeightedCrossEntropy
from .region import (
    FocalTversky,
    GeneralizedDice,
    GeneralizedWassersteinDice,
    Jaccard,
    LogCoshDice,
    LovaszSoftmax,
    SensitivitySpecificity,
    Tversky,
)

# Short aliases for configs: `class_path: lightning_seg.losses.CAML`.
CE = CrossEntropy
ML = Multiplicative
CAML = ConfidenceAdaptiveMultiplicative

__all__ = [
    "CAML",
    "CE",
    "EPS",
    "LOSSES",
    "ML",
    "Additive",
    "CAMLFixedR",
    "ConfidenceAdaptiveMultiplicative",
    "CrossEntropy",
    "Dice",
    "LossParts",
    "LossTerms",
    "Multiplicative",
    "SegmentationLoss",
    "build_loss",
    "check_inputs",
    "compute_terms",
    "register_loss",
    # Survey losses (pixel, region, boundary, compound).
    "Boundary",
    "BoundaryDoU",
    "CERegionKL",
    "CERegionL1",
    "Combo",
    "ExpLog",
    "Focal",
    "FocalTversky",
    "GDLBoundary",
    "GeneralizedDice",
    "GeneralizedWassersteinDice",
    "HausdorffDT",
    "Jaccard",
    "LogCoshDice",
    "LovaszSoftmax",
    "SensitivitySpecificity",
    "TopK",
    "Tversky",
    "UnifiedFocal",
    "WeightedCrossEntropy",
    "distance_transform_edt",
]
