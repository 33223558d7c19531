"""Callbacks: loss-part logging, a best checkpoint that later processes can find, prediction overlays."""

from .checkpoint import BestCheckpoint
from .loss_parts import LossPartsLogger
from .overlays import PredictionOverlays

__all__ = ["BestCheckpoint", "LossPartsLogger", "PredictionOverlays"]
