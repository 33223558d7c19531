"""DataModules sharing one mechanism (:class:`SegmentationDataModule`); the synthetic one needs no files."""

from .base import SegmentationDataModule, SegmentationDataset
from .splits import check_folds, load_fold, make_folds, save_folds, subset
from .synthetic import SyntheticDataModule, render_sample

__all__ = [
    "SegmentationDataModule",
    "SegmentationDataset",
    "SyntheticDataModule",
    "check_folds",
    "load_fold",
    "make_folds",
    "render_sample",
    "save_folds",
    "subset",
]
