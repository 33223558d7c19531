"""The paper's three datasets, read from their original files under ``data_dir`` by one shared mechanism.

:class:`FileDataModule` does the work: it reads the committed split file
(``lightning_seg/data/splits/<name>.json``, image keys per fold), checks and fetches files
(:mod:`lightning_seg.data.download`), decodes each image once per process (module-level cache, filled in
``setup`` before DataLoader workers fork), maps file label values to the paper's class order with unknown
pixels at ``ignore_index``, optionally resizes (area or bilinear for images, nearest for labels), and cuts
views (crops, tiles) that a dataset encodes in its sample ids. A dataset only names its files and label
values; Drosophila adds its crop and tile ids.

``data_dir`` is the folder that holds ``drosophila/``, ``covid19/`` and ``chase/`` (see ``docs/datasets.md``);
``None`` means ``$LIGHTNING_SEG_DATA``, else ``./data``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from PIL import Image

from .base import Sample, SegmentationDataModule
from .download import DATA_ENV, check_files, ensure_dataset, fix_hint
from .splits import SPLITS, Fold, load_fold

SPLIT_DIR = Path(__file__).with_name("splits")
UNKNOWN = 255  # label value of unknown pixels inside the cache; mapped to ``ignore_index`` on load
_INVALID = 254  # lookup-table value of file values a dataset does not define

#: ``(dataset class, data root, preprocessing, image key) -> (image, mask)``; see :meth:`FileDataModule.decoded`.
_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def clear_cache() -> None:
    """Forget every decoded image of this process."""
    _CACHE.clear()


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
        download: let ``prepare_data`` fetch missing or corrupt files (see :mod:`~lightning_seg.data.download`).
        mirror: base URL or folder serving the archives (else ``$LIGHTNING_SEG_MIRROR``, else upstream).
        verify: check the files' SHA-256 against the committed manifest in ``prepare_data``.
        **kwargs: see :class:`~lightning_seg.data.base.SegmentationDataModule`.
    """

    #: folder under ``data_dir``, stem of the split and checksum files
    name: ClassVar[str] = ""
    #: ``(height, width)`` every image and label file must have
    native_size: ClassVar[tuple[int, int]] = (0, 0)
    #: PIL mode the image files must have (``"L"`` greyscale or ``"RGB"``)
    image_mode: ClassVar[str] = "L"
    #: label file value -> class index (or :data:`UNKNOWN`); other values are an error
    label_values: ClassVar[dict[int, int]] = {}

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
        self.interpolation = interpolation
        self.split_file = Path(split_file) if split_file is not None else SPLIT_DIR / f"{self.name}.json"
        self.download = download
        self.mirror = mirror
        self.verify = verify
        self.num_folds = len(json.loads(self.split_file.read_text())["folds"]) if self.split_file.is_file() else 0
        if not 0 <= self.fold < self.num_folds:
            load_fold(self.split_file, self.fold)  # raises the informative error

    # --- what a dataset supplies -------------------------------------------------------------------
    def image_file(self, key: str) -> str:
        """Image file of image ``key``, relative to ``data_dir/<name>``."""
        raise NotImplementedError

    def label_file(self, key: str) -> str:
        """Label file of image ``key``, relative to ``data_dir/<name>``."""
        raise NotImplementedError

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
    def root(self) -> Path:
        """``data_dir/<name>``."""
        return Path(self.data_dir) / self.name

    @property
    def processed_size(self) -> tuple[int, int]:
        """``(height, width)`` of the decoded, resized images."""
        return self.image_size or self.native_size

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
        """Check the files against the committed checksums; with ``download``, fetch what is missing."""
        ensure_dataset(self.name, self.data_dir, download=self.download, mirror=self.mirror, verify=self.verify)

    def check_present(self) -> None:
        """Raise :class:`FileNotFoundError` naming the path and the fix unless every needed file is there."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.name}: dataset folder {self.root.resolve()} not found (data_dir={self.data_dir!r} must hold "
                f"{self.name}/). {fix_hint(self.name, self.data_dir)}"
            )
        missing, _ = check_files(self.name, self.data_dir, verify=False)
        if missing:
            raise FileNotFoundError(
                f"{self.name}: {len(missing)} file(s) missing under {Path(self.data_dir).resolve()}, e.g. {missing[0]}. "
                f"{fix_hint(self.name, self.data_dir)}"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.check_present()
        for key in self.all_keys():  # decode now, so that forked DataLoader workers share the cache
            self.decoded(key)
        super().setup(stage)

    def decoded(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Image (uint8 H×W×C, or float32 in [0, 1] once resized) and uint8 class mask of one image, cached."""
        cache_key = (
            type(self).__qualname__,
            str(Path(self.data_dir).resolve()),
            self.image_size,
            self.interpolation,
            key,
        )
        if cache_key not in _CACHE:
            _CACHE[cache_key] = self.decode(key)
        return _CACHE[cache_key]

    def decode(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Read, check, label-map and resize one image and its mask (no cache)."""
        image = self._read(self.root / self.image_file(key), self.image_mode)
        raw = self._read(self.root / self.label_file(key), None)
        lut = np.full(256, _INVALID, dtype=np.uint8)
        for value, cls in self.label_values.items():
            lut[value] = cls
        mask = lut[raw.astype(np.uint8)]
        if (mask == _INVALID).any():
            bad = sorted(set(np.unique(raw[mask == _INVALID]).tolist()))
            raise ValueError(
                f"{self.root / self.label_file(key)}: label values {bad[:10]} are not among the {self.name} values "
                f"{sorted(self.label_values)}; the file is corrupt or from another dataset version."
            )
        image = image[..., None] if image.ndim == 2 else image
        if self.image_size is not None:
            image, mask = _resize_image(image, self.image_size, self.interpolation), _resize_mask(mask, self.image_size)
        return image, mask

    def _read(self, path: Path, mode: str | None) -> np.ndarray:
        fix = f"Check it against the committed checksums (prepare_data) and fetch it again. {fix_hint(self.name, self.data_dir)}"
        if not path.is_file():
            raise FileNotFoundError(f"{self.name}: {path} not found. {fix}")
        try:
            with Image.open(path) as im:
                im.load()
                file_mode, array = im.mode, np.asarray(im)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on broken files
            raise ValueError(
                f"{self.name}: cannot decode {path} ({type(err).__name__}: {err}); the file is corrupt. {fix}"
            ) from err
        if mode is not None and file_mode != mode:
            raise ValueError(f"{path}: image mode {file_mode!r}, expected {mode!r}. {fix}")
        if mode is None and file_mode not in ("1", "L", "P"):
            raise ValueError(f"{path}: label mode {file_mode!r}, expected a single-channel 8-bit or 1-bit image. {fix}")
        if array.shape[:2] != tuple(self.native_size):
            raise ValueError(
                f"{path}: size {array.shape[1]}×{array.shape[0]} (width×height), expected "
                f"{self.native_size[1]}×{self.native_size[0]} for {self.name}. {fix}"
            )
        return array

    def load_sample(self, sample_id: str) -> Sample:
        image, mask = self.view(sample_id, *self.decoded(self.image_key(sample_id)))
        image = (
            image.astype(np.float32) / np.float32(255.0)
            if image.dtype == np.uint8
            else image.astype(np.float32, copy=True)
        )
        labels = mask.astype(np.int64)
        if self.ignore_index != UNKNOWN:
            labels[mask == UNKNOWN] = self.ignore_index
        return image, labels


class DrosophilaDataModule(FileDataModule):
    """Drosophila ssTEM VNC stack 1: 20 sections of 1024×1024, five classes (the paper's Tab. 3 order).

    Labels are the merged ``labels/`` PNGs: {0, 32, 64, 96, 128} membrane, 191 mitochondria, 223 synapse,
    159 glia/extracellular, 255 intracellular. With ``crop_size`` (256, the paper's) the folds' images
    become samples as follows:

    * training: ``crops_per_image`` ids ``"NN/cropK"`` per image (12 images × 4 = the paper's 48 patches per
      epoch). With ``augment`` each is a fresh random ``crop_size`` crop plus a random flip, drawn by the
      training transform from the whole image; without, each id is a fixed crop whose position depends
      only on ``(patch_seed, NN, K)``.
    * validation and test: the ``(1024 / crop_size)²`` non-overlapping tiles ``"NN/tileTT"`` of each image
      (16 for 256), numbered row by row.

    ``train_fraction`` draws whole images (all crops of an image together). ``crop_size=None`` uses whole
    images everywhere (ids ``"NN"``).
    """

    name = "drosophila"
    class_names = ("membrane", "mitochondria", "synapse", "glia/extracellular", "intracellular")
    curvilinear_classes = ("membrane",)  # thin cell boundaries: clDice's own EM benchmark (CREMI) scores them
    in_channels = 1
    native_size = (1024, 1024)
    image_mode = "L"
    label_values = {0: 0, 32: 0, 64: 0, 96: 0, 128: 0, 191: 1, 223: 2, 159: 3, 255: 4}
    _ID = re.compile(r"^(?P<key>\d{2})(?:/(?P<kind>crop|tile)(?P<index>\d+))?$")

    def __init__(self, crop_size: int | None = 256, crops_per_image: int = 4, patch_seed: int = 0, **kwargs) -> None:
        super().__init__(crop_size=crop_size, **kwargs)
        if crops_per_image < 1:
            raise ValueError(f"crops_per_image must be ≥ 1, got {crops_per_image}")
        height, width = self.processed_size
        if crop_size is not None and (crop_size < 1 or height % crop_size or width % crop_size):
            raise ValueError(f"crop_size must divide the image size {height}×{width} (for the tiles), got {crop_size}")
        self.crops_per_image = crops_per_image
        self.patch_seed = patch_seed

    def image_file(self, key: str) -> str:
        return f"images/{key}.tif"

    def label_file(self, key: str) -> str:
        return f"labels/labels{int(key):08d}.png"

    @property
    def tiles_per_image(self) -> int:
        height, width = self.processed_size
        return (height // self.crop_size) * (width // self.crop_size) if self.crop_size else 1

    def expand(self, split: str, keys: Sequence[str]) -> list[str]:
        if not self.crop_size:
            return list(keys)
        if split == "train":
            return [f"{k}/crop{i}" for k in keys for i in range(self.crops_per_image)]
        return [f"{k}/tile{t:02d}" for k in keys for t in range(self.tiles_per_image)]

    def _parse(self, sample_id: str) -> re.Match:
        match = self._ID.match(sample_id)
        if match is None:
            raise ValueError(f"not a {self.name} sample id: {sample_id!r} (expected 'NN', 'NN/cropK' or 'NN/tileTT')")
        return match

    def image_key(self, sample_id: str) -> str:
        return self._parse(sample_id)["key"]

    def view(self, sample_id: str, image: np.ndarray, mask: np.ndarray) -> Sample:
        match = self._parse(sample_id)
        if match["kind"] is None:
            return image, mask
        size, (height, width), index = self.crop_size, image.shape[:2], int(match["index"])
        if not size:
            raise ValueError(f"{sample_id!r} needs crop_size to be set")
        if match["kind"] == "tile":
            per_row = width // size
            if index >= self.tiles_per_image:
                raise ValueError(f"{sample_id!r}: only {self.tiles_per_image} tiles per image")
            y, x = (index // per_row) * size, (index % per_row) * size
        elif self.augment:  # the training transform draws the random crop from the whole image
            return image, mask
        else:
            rng = np.random.default_rng([self.patch_seed, int(match["key"]), index])
            y, x = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        return image[y : y + size, x : x + size], mask[y : y + size, x : x + size]


class Covid19DataModule(FileDataModule):
    """COVID-19 CT (MedSeg, 100 axial slices of 512×512), four classes in the paper's Tab. 1 order.

    Images are ``covid19/images/tr_im_NNNN.png``; labels the derived 4-class masks
    ``covid19/labels_4class_derived/tr_mask_NNNN.png``, whose values 1 = ground glass, 2 = consolidation,
    3 = pleural effusion are remapped to the table order (background, consolidation, ground glass, pleural
    effusion); 255 (infection of unknown class) becomes ``ignore_index``. Resized to ``image_size`` (256).
    """

    name = "covid19"
    class_names = ("background", "consolidation", "ground glass", "pleural effusion")
    in_channels = 1
    native_size = (512, 512)
    image_mode = "L"
    label_values = {0: 0, 1: 2, 2: 1, 3: 3, 255: UNKNOWN}

    def __init__(self, image_size: int | tuple[int, int] | None = 256, **kwargs) -> None:
        super().__init__(image_size=image_size, **kwargs)

    def image_file(self, key: str) -> str:
        return f"images/tr_im_{key}.png"

    def label_file(self, key: str) -> str:
        return f"labels_4class_derived/tr_mask_{key}.png"


class ChaseDataModule(FileDataModule):
    """CHASE_DB1: 28 RGB fundus images of 999×960 (both eyes of 14 children), background and retinal vessel.

    Images ``chase/images/Image_NNX.jpg``, labels the first observer's ``chase/labels/Image_NNX_1stHO.png``
    (1-bit; 0 background, 1 or 255 vessel). Resized to ``image_size`` (256×256, as in the paper, which
    changes the aspect ratio slightly). Image keys are the file stems, ``Image_01L`` ... ``Image_14R``.
    """

    name = "chase"
    class_names = ("background", "retinal vessel")
    curvilinear_classes = ("retinal vessel",)
    in_channels = 3
    native_size = (960, 999)
    image_mode = "RGB"
    label_values = {0: 0, 1: 1, 255: 1}

    def __init__(self, image_size: int | tuple[int, int] | None = 256, **kwargs) -> None:
        super().__init__(image_size=image_size, **kwargs)

    def image_file(self, key: str) -> str:
        return f"images/{key}.jpg"

    def label_file(self, key: str) -> str:
        return f"labels/{key}_1stHO.png"


def child_of(key: str) -> str:
    """CHASE grouping: ``Image_01L`` and ``Image_01R`` belong to child ``Image_01``."""
    return key[:-1]
