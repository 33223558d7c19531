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
from .paper import (
    Additive,
    CAMLFixedR,
    ConfidenceAdaptiveMultiplicative,
    CrossEntropy,
    Dice,
    Multiplicative,
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
]
