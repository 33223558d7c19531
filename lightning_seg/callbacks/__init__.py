"""Callbacks: checkpoints, the non-finite guard, loss-part logging, prediction overlays, progress, a one-line model size,
host memory reused between CPU steps."""

from .checkpoint import CheckpointError, RunCheckpoint
from .host_memory import HostMemoryReuse
from .loss_parts import LossPartsLogger
from .nonfinite import NonFiniteError, NonFiniteGuard
from .overlays import PredictionOverlays
from .progress import ProgressBar
from .summary import ModelSize

__all__ = [
    "CheckpointError",
    "HostMemoryReuse",
    "LossPartsLogger",
    "ModelSize",
    "NonFiniteError",
    "NonFiniteGuard",
    "PredictionOverlays",
    "ProgressBar",
    "RunCheckpoint",
]
