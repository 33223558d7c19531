"""Callbacks: checkpoints, the non-finite guard, loss-part logging, prediction overlays, progress, a one-line model size."""

from .checkpoint import CheckpointError, RunCheckpoint
from .loss_parts import LossPartsLogger
from .nonfinite import NonFiniteError, NonFiniteGuard
from .overlays import PredictionOverlays
from .progress import ProgressBar
from .summary import ModelSize

__all__ = [
    "CheckpointError",
    "LossPartsLogger",
    "ModelSize",
    "NonFiniteError",
    "NonFiniteGuard",
    "PredictionOverlays",
    "ProgressBar",
    "RunCheckpoint",
]
