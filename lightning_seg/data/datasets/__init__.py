"""The paper's three datasets, one module each: its :class:`~lightning_seg.data.info.DatasetInfo` and DataModule.

:data:`DATASETS` lists them by name, in the paper's order; the downloader's command line, the split maker
and the docs tables iterate over it.
"""

from .chase import CHASE, ChaseDataModule, child_of
from .covid19 import COVID19, Covid19DataModule
from .drosophila import DROSOPHILA, DrosophilaDataModule, section_block
from .file import RESIZED_CROP_SIZE, RESIZED_SIZE, FileDataModule, clear_cache, default_data_dir

#: every file-backed dataset's DataModule, by dataset name
DATASETS: dict[str, type[FileDataModule]] = {
    module.info.name: module for module in (DrosophilaDataModule, Covid19DataModule, ChaseDataModule)
}

__all__ = [
    "CHASE",
    "COVID19",
    "DATASETS",
    "DROSOPHILA",
    "RESIZED_CROP_SIZE",
    "RESIZED_SIZE",
    "ChaseDataModule",
    "Covid19DataModule",
    "DrosophilaDataModule",
    "FileDataModule",
    "child_of",
    "clear_cache",
    "default_data_dir",
    "section_block",
]
