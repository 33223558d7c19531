"""lightning-seg: a PyTorch Lightning template for segmentation-loss research."""

from .module import SegmentationModule

__version__ = "0.1.0"
__all__ = ["SegmentationModule"]
