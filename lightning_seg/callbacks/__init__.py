"""Callbacks: loss-part logging, a best checkpoint that later processes can find, prediction overlays, progress."""

from .checkpoint import BestCheckpoint
from .loss_parts import LossPartsLogger
from .overlays import PredictionOverlays
from .progress import ProgressBar

__all__ = ["BestCheckpoint", "LossPartsLogger", "PredictionOverlays", "ProgressBar"]
