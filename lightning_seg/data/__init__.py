"""DataModules sharing one mechanism (:class:`SegmentationDataModule`); the synthetic one needs no files.

Layout: ``base.py`` (the mechanism), ``splits.py`` (folds, nested fractions), ``synthetic.py``,
``datasets/`` (one module per real dataset: its facts and its DataModule, on ``datasets/file.py``), and
the generic file handling: ``info.py`` (what a dataset's record holds), ``manifest.py`` (checksums),
``transfer.py`` (downloads), ``archives.py`` (safe extraction), ``install.py`` (staged repair),
``mirror.py`` (mirror archives), ``download.py`` (command line).
"""

from .archives import ArchiveError, ExtractLimits, UnsafeArchiveError
from .base import SegmentationDataModule, SegmentationDataset
from .datasets import (
    DATASETS,
    ChaseDataModule,
    Covid19DataModule,
    DrosophilaDataModule,
    FileDataModule,
    clear_cache,
)
from .info import Archive, DatasetInfo
from .install import ensure_dataset
from .manifest import ChecksumError, verify_dataset
from .splits import check_folds, load_fold, make_folds, save_folds, subset
from .synthetic import SyntheticDataModule, render_sample
from .transfer import DownloadError

__all__ = [
    "DATASETS",
    "Archive",
    "ArchiveError",
    "ChaseDataModule",
    "ChecksumError",
    "Covid19DataModule",
    "DatasetInfo",
    "DownloadError",
    "DrosophilaDataModule",
    "ExtractLimits",
    "FileDataModule",
    "SegmentationDataModule",
    "SegmentationDataset",
    "SyntheticDataModule",
    "UnsafeArchiveError",
    "check_folds",
    "clear_cache",
    "ensure_dataset",
    "load_fold",
    "make_folds",
    "render_sample",
    "save_folds",
    "subset",
    "verify_dataset",
]
