"""Drosophila ssTEM VNC, stack 1: 20 serial sections of 1024×1024, five classes (the paper's Table 3 order)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from ..base import Sample, run_seed
from ..info import DatasetInfo, github_archive
from .file import FileDataModule

log = logging.getLogger(__name__)


def section_block(key: str) -> str:
    """Drosophila grouping: blocks of 4 consecutive sections (``sections00-03`` ... ``sections16-19``)."""
    first = 4 * (int(key) // 4)
    return f"sections{first:02d}-{first + 3:02d}"


DROSOPHILA = DatasetInfo(
    name="drosophila",
    title="Drosophila ssTEM VNC",
    homepage="https://doi.org/10.6084/m9.figshare.856713",
    provenance=(
        "stack1 raw sections and merged labels of the dataset's original upload by S. Gerhard "
        "(unidesigner/groundtruth-drosophila-vnc); cite Gerhard et al. 2013 (figshare)"
    ),
    image_file="images/{key}.tif",
    label_file="labels/labels000000{key}.png",
    key_pattern=r"\d{2}",
    image_mode="L",
    native_size=(1024, 1024),
    class_names=("membrane", "mitochondria", "synapse", "glia/extracellular", "intracellular"),
    curvilinear_classes=("membrane",),  # thin cell boundaries: clDice's own EM benchmark (CREMI) scores them
    # membrane at four orientations (0, 32, 64, 96) and junctions (128)
    label_values={0: 0, 32: 0, 64: 0, 96: 0, 128: 0, 191: 1, 223: 2, 159: 3, 255: 4},
    archives=(
        github_archive(
            "unidesigner",
            "groundtruth-drosophila-vnc",
            "4a5f051466d24d8dc1e855ab55658bb1b1dcd6bf",
            {"stack1/raw": "drosophila/images", "stack1/labels": "drosophila/labels"},
        ),
    ),
    num_val=4,
    split_unit="one id per section image; group = block of 4 consecutive sections",
    group=section_block,
)


class DrosophilaDataModule(FileDataModule):
    """Drosophila ssTEM (:data:`DROSOPHILA`) cut into the paper's 256² patches.

    With ``crop_size`` (256, the paper's) the fold's images become samples as follows:

    * training: ``crops_per_image`` ids ``"NN/cropK"`` per image (12 images × 4 = the paper's 48 patches).
      With ``fixed_patches`` (the default, the paper's "prepared 48 training patches") each id is one fixed
      window whose position depends on ``(patch seed, fold, NN, K)`` only: drawn once, the same every
      epoch, and nested across ``train_fraction`` (a smaller fraction keeps a subset of the images with the
      same patches). ``augment`` adds a random horizontal flip, drawn anew every epoch. Without
      ``fixed_patches`` each id is a fresh random window at every access (needs ``augment``).
    * validation and test: the ``(1024 / crop_size)²`` non-overlapping tiles ``"NN/tileTT"`` of each image
      (16 for 256), numbered row by row.

    ``train_fraction`` draws whole images (all patches of an image together). ``crop_size=None`` uses whole
    images everywhere (ids ``"NN"``).

    Args:
        crop_size: side of the training patches and evaluation tiles; must divide 1024.
        crops_per_image: training patches per image.
        fixed_patches: draw the training patches once per (fold, seed) instead of at every access.
        patch_seed: seed of the fixed patches; ``None``: the run's seed (``seed_everything``, read from
            ``$PL_GLOBAL_SEED``; 0 with a warning if no seed was set).
        **kwargs: see :class:`~lightning_seg.data.datasets.file.FileDataModule`.
    """

    #: the dataset's record: files, labels, classes, sources, splits
    info = DROSOPHILA
    _ID = re.compile(r"^(?P<key>\d{2})(?:/(?P<kind>crop|tile)(?P<index>\d+))?$")

    def __init__(
        self,
        crop_size: int | None = 256,
        crops_per_image: int = 4,
        fixed_patches: bool = True,
        patch_seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(crop_size=crop_size, **kwargs)
        if crops_per_image < 1:
            raise ValueError(f"crops_per_image must be ≥ 1, got {crops_per_image}")
        height, width = self.processed_size
        if crop_size is not None and (height % crop_size or width % crop_size):
            raise ValueError(f"crop_size must divide the image size {height}×{width} (for the tiles), got {crop_size}")
        if crop_size is not None and not fixed_patches and not self.augment:
            raise ValueError(
                "fixed_patches=False draws a random patch at every access, which is augmentation; with augment=False "
                "set fixed_patches=True (fixed patches, no flip)"
            )
        self.crops_per_image = crops_per_image
        self.fixed_patches = fixed_patches
        self.patch_seed = patch_seed
        self._run_seed: int | None = None
        #: ``(patch seed, fold, key, index, image height, width, crop size) -> (y, x)``: drawing a patch's origin anew
        #: at every access (a generator per sample) cost more than the rest of a small training sample
        self._patch_origins: dict[tuple, tuple[int, int]] = {}

    @property
    def random_crop_size(self) -> int | None:
        return None if self.fixed_patches else self.crop_size

    @property
    def tiles_per_image(self) -> int:
        height, width = self.processed_size
        return (height // self.crop_size) * (width // self.crop_size) if self.crop_size else 1

    @property
    def resolved_patch_seed(self) -> int:
        """``patch_seed``, or the run's seed (read once, at the first use)."""
        if self.patch_seed is not None:
            return self.patch_seed
        if self._run_seed is None:
            self._run_seed = run_seed("drosophila: patch_seed=None: the fixed patches")
        return self._run_seed

    def setup(self, stage: str | None = None) -> None:
        if self.crop_size and self.fixed_patches and not self.datasets:
            log.info("drosophila: fixed training patches of fold %d, seed %d", self.fold, self.resolved_patch_seed)
        super().setup(stage)

    def patch_origin(self, key: str, index: int) -> tuple[int, int]:
        """Top-left corner ``(y, x)`` of fixed training patch ``index`` of image ``key``.

        Uniform over every position inside the image, from a generator seeded by ``(patch seed, fold, key,
        index)``: the same in every epoch and for every ``train_fraction``, another for another fold or seed.
        """
        height, width = self.processed_size
        memo_key = (self.resolved_patch_seed, self.fold, key, index, height, width, self.crop_size)
        origin = self._patch_origins.get(memo_key)
        if origin is None:
            rng = np.random.default_rng([self.resolved_patch_seed, self.fold, int(key), index])
            origin = int(rng.integers(0, height - self.crop_size + 1)), int(rng.integers(0, width - self.crop_size + 1))
            self._patch_origins[memo_key] = origin
        return origin

    def train_patches(self) -> dict[str, tuple[int, int]]:
        """``{sample id: (y, x)}`` of the fixed patches of the (reduced) training set."""
        if not (self.crop_size and self.fixed_patches):
            raise ValueError("train_patches needs crop_size set and fixed_patches=True")
        return {
            i: self.patch_origin(self.image_key(i), int(self._parse(i)["index"])) for i in self.split_ids()["train"]
        }

    def expand(self, split: str, keys: Sequence[str]) -> list[str]:
        if not self.crop_size:
            return list(keys)
        if split == "train":
            return [f"{k}/crop{i}" for k in keys for i in range(self.crops_per_image)]
        return [f"{k}/tile{t:02d}" for k in keys for t in range(self.tiles_per_image)]

    def _parse(self, sample_id: str) -> re.Match:
        match = self._ID.match(sample_id)
        if match is None:
            raise ValueError(
                f"not a {self.info.name} sample id: {sample_id!r} (expected 'NN', 'NN/cropK' or 'NN/tileTT')"
            )
        return match

    def image_key(self, sample_id: str) -> str:
        return self._parse(sample_id)["key"]

    def view(self, sample_id: str, image: np.ndarray, mask: np.ndarray) -> Sample:
        match = self._parse(sample_id)
        if match["kind"] is None:
            return image, mask
        size, width, index = self.crop_size, image.shape[1], int(match["index"])
        if not size:
            raise ValueError(f"{sample_id!r} needs crop_size to be set")
        if match["kind"] == "tile":
            if index >= self.tiles_per_image:
                raise ValueError(f"{sample_id!r}: only {self.tiles_per_image} tiles per image")
            per_row = width // size
            y, x = (index // per_row) * size, (index % per_row) * size
        elif self.fixed_patches:
            y, x = self.patch_origin(match["key"], index)
        else:  # the training augmentation draws the random crop from the whole image
            return image, mask
        return image[y : y + size, x : x + size], mask[y : y + size, x : x + size]
