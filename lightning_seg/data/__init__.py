"""DataModules sharing one mechanism (:class:`SegmentationDataModule`); the synthetic one needs no files."""

from .base import SegmentationDataModule, SegmentationDataset
from .datasets import ChaseDataModule, Covid19DataModule, DrosophilaDataModule, FileDataModule, clear_cache
from .download import ChecksumError, UnsafeArchiveError, ensure_dataset
from .splits import check_folds, load_fold, make_folds, save_folds, subset
from .synthetic import SyntheticDataModule, render_sample

__all__ = [
    "ChaseDataModule",
    "ChecksumError",
    "Covid19DataModule",
    "DrosophilaDataModule",
    "FileDataModule",
    "UnsafeArchiveError",
    "clear_cache",
    "ensure_dataset",
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
