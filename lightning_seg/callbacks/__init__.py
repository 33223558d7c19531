"""Callbacks: loss-part logging and a best checkpoint that later processes can find."""

from .checkpoint import BestCheckpoint
from .loss_parts import LossPartsLogger

__all__ = ["BestCheckpoint", "LossPartsLogger"]
