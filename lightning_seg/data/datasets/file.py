"""The shared mechanism of the file-backed datasets: :class:`FileDataModule`.

A dataset supplies its :class:`~lightning_seg.data.info.DatasetInfo` (:attr:`FileDataModule.info`, abstract)
and, if it cuts views of its images (Drosophila's patches and tiles), overrides :meth:`~FileDataModule.expand`,
:meth:`~FileDataModule.image_key` and :meth:`~FileDataModule.view`. The rest is here: the committed split file
(``lightning_seg/data/splits/<name>.json``, image keys per fold), the files checked against the committed
manifest once per process before their first use (:func:`~lightning_seg.data.manifest.verify_dataset`),
fetching with ``download`` (:func:`~lightning_seg.data.install.ensure_dataset`), decoding each image once
per process (module-level cache, filled in ``setup`` before DataLoader workers fork), mapping file label
values to the paper's class order with unknown pixels at ``ignore_index``, and resizing (area or bilinear
for images, nearest for labels).

``data_dir`` is the folder that holds ``drosophila/``, ``covid19/`` and ``chase/`` (see ``docs/datasets.md``);
``None`` means ``$LIGHTNING_SEG_DATA``, else ``./data``. A dataset folder may be a symlink.
"""

from __future__ import annotations

import functools
import json
import os
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from ..base import Sample, SegmentationDataModule
from ..info import UNKNOWN, DatasetInfo
from ..install import ensure_dataset
from ..manifest import DATA_ENV, fix_hint, forget_checks, verify_dataset
from ..splits import SPLIT_DIR, SPLITS, Fold, load_fold

_INVALID = 254  # lookup-table value of file values a dataset does not define

#: side the paper resizes COVID-19 and CHASE images to
RESIZED_SIZE = 256
#: side of the random training crop of those resized images (the paper gives none; docs/datasets.md argues
#: it): the largest multiple of 32 below 256, so every model takes both the crops and the whole images
RESIZED_CROP_SIZE = 224

#: ``(dataset class, data root, preprocessing, image key) -> (image, mask)``; see :meth:`FileDataModule.decoded`.
_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def clear_cache() -> None:
    """Forget every decoded image of this process, and which datasets were checked (the next use checks again)."""
    _CACHE.clear()
    forget_checks()


def default_data_dir() -> str:
    return os.environ.get(DATA_ENV) or "data"


def _resize_image(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """uint8 H×W×C to float32 h×w×C in [0, 1], channel by channel in float (no 8-bit rounding)."""
    resample = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR}[interpolation]
    height, width = size
    channels = [
        np.asarray(Image.fromarray(image[..., c].astype(np.float32) / 255.0).resize((width, height), resample))
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


class FileDataModule(SegmentationDataModule):
    """Shared base of the file-backed datasets (see the module docstring).

    Args:
        data_dir: folder holding ``<name>/``; ``None``: ``$LIGHTNING_SEG_DATA``, else ``data``.
        image_size: resize every image to this side (or ``(height, width)``) before anything else;
            ``None`` keeps the files' size.
        interpolation: image resampling, ``"area"`` (box filter: the mean over each target pixel's footprint)
            or ``"bilinear"`` (Pillow's, antialiased when shrinking); labels always use nearest neighbour.
        split_file: a split JSON other than the committed ``splits/<name>.json``.
        download: let ``prepare_data`` fetch missing or corrupt files (see :mod:`~lightning_seg.data.install`).
        mirror: base URL or folder serving the archives (else ``$LIGHTNING_SEG_MIRROR``, else upstream).
        verify: check the files' SHA-256 against the committed manifest before their first use in a process;
            ``False`` uses them unchecked (logged).
        **kwargs: see :class:`~lightning_seg.data.base.SegmentationDataModule`.

    Raises:
        ValueError: a bad option (the message names it), e.g. a ``crop_size`` larger than the images.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        image_size: int | tuple[int, int] | None = None,
        interpolation: Literal["area", "bilinear"] = "area",
        split_file: str | None = None,
        download: bool = False,
        mirror: str | None = None,
        verify: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir if data_dir is not None else default_data_dir(), **kwargs)
        if interpolation not in ("area", "bilinear"):
            raise ValueError(f"interpolation must be 'area' or 'bilinear', got {interpolation!r}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be a positive side or (height, width), got {image_size}")
        self.image_size = tuple(image_size) if image_size is not None else None
        if self.crop_size is not None and self.crop_size > min(self.processed_size):
            height, width = self.processed_size
            raise ValueError(
                f"crop_size={self.crop_size} is larger than the {height}×{width} images of {self.info.name}"
            )
        self.interpolation = interpolation
        self.split_file = Path(split_file) if split_file is not None else SPLIT_DIR / f"{self.info.name}.json"
        self.download = download
        self.mirror = mirror
        self.verify = verify
        self.num_folds = len(json.loads(self.split_file.read_text())["folds"]) if self.split_file.is_file() else 0
        if not 0 <= self.fold < self.num_folds:
            load_fold(self.split_file, self.fold)  # raises the informative error

    # --- what a dataset supplies -------------------------------------------------------------------
    @property
    @abstractmethod
    def info(self) -> DatasetInfo:
        """The dataset's facts (a class attribute in each dataset): files, labels, classes, sources, splits."""

    def expand(self, split: str, keys: Sequence[str]) -> list[str]:
        """Sample ids of a split from its image keys (one per image unless a dataset cuts views)."""
        return list(keys)

    def image_key(self, sample_id: str) -> str:
        """The image a sample id shows."""
        return sample_id

    def view(self, sample_id: str, image: np.ndarray, mask: np.ndarray) -> Sample:
        """The part of the decoded image that ``sample_id`` shows (the whole image by default)."""
        return image, mask

    # --- shared ------------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    @property
    def curvilinear_classes(self) -> tuple[str, ...]:
        return self.info.curvilinear_classes

    @property
    def in_channels(self) -> int:
        return self.info.in_channels

    @property
    def root(self) -> Path:
        """``data_dir/<name>``."""
        return Path(self.data_dir) / self.info.name

    @property
    def processed_size(self) -> tuple[int, int]:
        """``(height, width)`` of the decoded, resized images."""
        return self.image_size or self.info.native_size

    def fold_keys(self) -> Fold:
        """Image keys of fold ``self.fold``, as in the split file."""
        return load_fold(self.split_file, self.fold)

    def all_keys(self) -> list[str]:
        return sorted(k for split in SPLITS for k in self.fold_keys()[split])

    def fold_ids(self) -> Fold:
        keys = self.fold_keys()
        return {split: self.expand(split, keys[split]) for split in SPLITS}

    def sample_group(self, sample_id: str) -> str:
        return self.image_key(sample_id)

    def prepare_data(self) -> None:
        """Check the files against the committed checksums; with ``download``, fetch what is missing or corrupt."""
        ensure_dataset(self.info, self.data_dir, download=self.download, mirror=self.mirror, verify=self.verify)

    def check_files(self) -> None:
        """Raise naming the files and the fix unless every file is there and intact (once per process and folder).

        With ``verify=False``: no check, a warning in the log.
        """
        verify_dataset(self.info, self.data_dir, self.verify)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for key in self.all_keys():  # decode now, so that forked DataLoader workers share the cache
            self.decoded(key)
        super().setup(stage)

    @functools.cached_property
    def _resolved_data_dir(self) -> str:
        """``data_dir`` with its links resolved, once (a file-system walk that every sample would otherwise pay)."""
        return str(Path(self.data_dir).resolve())

    def decoded(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Image (uint8 H×W×C, or float32 in [0, 1] once resized) and uint8 class mask of one image, cached, read-only.

        The dataset's files are checked (:meth:`check_files`) before the first decode of the process.
        """
        cache_key = (
            type(self).__qualname__,
            self._resolved_data_dir,
            self.image_size,
            self.interpolation,
            key,
        )
        if cache_key not in _CACHE:
            self.check_files()
            arrays = self.decode(key)
            for array in arrays:  # samples are views of these: a write through one would change every later sample
                array.flags.writeable = False
            _CACHE[cache_key] = arrays
        return _CACHE[cache_key]

    def decode(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Read, check, label-map and resize one image and its mask (no cache, no checksum)."""
        info = self.info
        label_path = Path(self.data_dir) / info.label_path(key)
        image = self._read(Path(self.data_dir) / info.image_path(key), info.image_mode)
        raw = self._read(label_path, None)
        lut = np.full(256, _INVALID, dtype=np.uint8)
        for value, cls in info.label_values.items():
            lut[value] = cls
        mask = lut[raw.astype(np.uint8)]
        if (mask == _INVALID).any():
            bad = sorted(set(np.unique(raw[mask == _INVALID]).tolist()))
            raise ValueError(
                f"{label_path}: label values {bad[:10]} are not among the {info.name} values "
                f"{sorted(info.label_values)}; the file is corrupt or from another dataset version."
            )
        image = image[..., None] if image.ndim == 2 else image
        if self.image_size is not None:
            image, mask = _resize_image(image, self.image_size, self.interpolation), _resize_mask(mask, self.image_size)
        return image, mask

    def _read(self, path: Path, mode: str | None) -> np.ndarray:
        info = self.info
        fix = f"Check it against the committed checksums (verify=True) and fetch it again. {fix_hint(info, self.data_dir)}"
        if not path.is_file():
            raise FileNotFoundError(f"{info.name}: {path} not found. {fix}")
        try:
            with Image.open(path) as im:
                im.load()
                file_mode, array = im.mode, np.asarray(im)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on broken files
            raise ValueError(
                f"{info.name}: cannot decode {path} ({type(err).__name__}: {err}); the file is corrupt. {fix}"
            ) from err
        if mode is not None and file_mode != mode:
            raise ValueError(f"{path}: image mode {file_mode!r}, expected {mode!r}. {fix}")
        if mode is None and file_mode not in ("1", "L", "P"):
            raise ValueError(f"{path}: label mode {file_mode!r}, expected a single-channel 8-bit or 1-bit image. {fix}")
        if array.shape[:2] != tuple(info.native_size):
            raise ValueError(
                f"{path}: size {array.shape[1]}×{array.shape[0]} (width×height), expected "
                f"{info.native_size[1]}×{info.native_size[0]} for {info.name}. {fix}"
            )
        return array

    def load_sample(self, sample_id: str) -> Sample:
        """Read-only views of the cached image (uint8, or float32 once resized) and uint8 mask: the image is converted
        after the training crop (:func:`~lightning_seg.data.base.as_item`). Where ``ignore_index`` is not the files'
        unknown value (255) the mask is a whole int64 copy with that value instead (before the crop)."""
        image, mask = self.view(sample_id, *self.decoded(self.image_key(sample_id)))
        if self.ignore_index != UNKNOWN:
            labels = mask.astype(np.int64)
            labels[mask == UNKNOWN] = self.ignore_index
            mask = labels
        return image, mask
