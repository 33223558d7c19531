"""The embedded default dataset: procedural images with strongly imbalanced classes, no files needed.

Each image shows a textured background, a few large smooth regions, thin curvilinear structures
(vessel- or membrane-like, 1-2 px wide) and small blobs, blurred and corrupted by Gaussian noise, so that
a network must use context and the rare thin and small classes are hard. Sample ``i`` is a pure
function of ``(seed, i, image_size)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from .base import Sample, SegmentationDataModule
from .splits import Fold, make_folds

CLASS_NAMES = ("background", "region", "curve", "blob")
# Mean intensity per class: close enough that noise makes single pixels ambiguous.
CLASS_INTENSITY = np.array([0.35, 0.55, 0.8, 0.1], dtype=np.float32)


def render_sample(index: int, seed: int = 0, image_size: int = 64, noise: float = 0.1) -> Sample:
    """Draw synthetic sample ``index``: image (H×W×1 float32 in [0, 1]) and mask (H×W int64, classes 0-3)."""
    rng = np.random.default_rng([seed, index])
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    mask = np.zeros((size, size), dtype=np.int64)

    # Large regions: 1-2 rotated ellipses covering roughly a fifth of the image.
    for _ in range(rng.integers(1, 3)):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        ry, rx = rng.uniform(0.12, 0.28, 2)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        mask[(u / rx) ** 2 + (v / ry) ** 2 <= 1.0] = 1

    # Thin curves: smooth random paths, rasterised and widened by a distance transform.
    for _ in range(rng.integers(2, 4)):
        t = np.linspace(0.0, 1.0, 4 * size)
        start, end = rng.uniform(0.0, 1.0, 2), rng.uniform(0.0, 1.0, 2)
        amp, freq, phase = rng.uniform(0.03, 0.12), rng.uniform(1.0, 3.0), rng.uniform(0, 2 * np.pi)
        normal = np.array([-(end - start)[1], (end - start)[0]]) / (np.linalg.norm(end - start) + 1e-6)
        path = start + t[:, None] * (end - start) + (amp * np.sin(2 * np.pi * freq * t + phase))[:, None] * normal
        pixels = np.clip(np.rint(path * size).astype(int), 0, size - 1)
        centre = np.ones((size, size), dtype=bool)
        centre[pixels[:, 0], pixels[:, 1]] = False
        mask[ndimage.distance_transform_edt(centre) <= rng.uniform(0.0, 1.0)] = 2

    # Small blobs: discs of radius 1.5-3 px.
    for _ in range(rng.integers(3, 7)):
        cy, cx = rng.uniform(0.05, 0.95, 2)
        radius = rng.uniform(1.5, 3.0) / size
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 3

    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=size / 16)
    texture *= 0.06 / (texture.std() + 1e-6)
    image = ndimage.gaussian_filter(CLASS_INTENSITY[mask], sigma=0.7) + texture
    image += noise * rng.standard_normal((size, size)).astype(np.float32)
    return np.clip(image, 0.0, 1.0)[..., None].astype(np.float32), mask


class SyntheticDataModule(SegmentationDataModule):
    """Synthetic images of four classes (background, region, curve, blob), generated in memory.

    Args:
        num_images: size of the whole pool; folds split it like the real datasets (test, val, train).
        image_size: side of each square image.
        seed: seed of the image generator (``subset_seed`` and the fold split are separate).
        num_folds: number of cross-validation folds over the pool.
        **kwargs: see :class:`SegmentationDataModule`.
    """

    class_names = CLASS_NAMES
    curvilinear_classes = ("curve",)
    in_channels = 1

    def __init__(self, num_images: int = 40, image_size: int = 64, seed: int = 0, num_folds: int = 5, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_images < 2 * num_folds:
            raise ValueError(f"num_images must be ≥ 2·num_folds = {2 * num_folds}, got {num_images}")
        if not 0 <= self.fold < num_folds:
            raise ValueError(f"fold must lie in [0, {num_folds - 1}], got {self.fold}")
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.num_folds = num_folds
        # Samples are cheap but not free: render each once per process.
        self._render = lru_cache(maxsize=None)(render_sample)

    def fold_ids(self) -> Fold:
        ids = [f"{i:04d}" for i in range(self.num_images)]
        return make_folds(ids, num_folds=self.num_folds, seed=0)[self.fold]

    def load_sample(self, sample_id: str) -> Sample:
        return self._render(int(sample_id), self.seed, self.image_size)
