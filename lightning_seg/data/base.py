"""One mechanism for every dataset: a fold's split, a nested training fraction, albumentations, loaders.

A dataset subclasses :class:`SegmentationDataModule` and supplies three things: its class names and
channel count, :meth:`~SegmentationDataModule.fold_ids` (train/val/test ids of the configured fold) and
:meth:`~SegmentationDataModule.load_sample` (one image and its mask, as NumPy arrays); the last two are
abstract. Everything else (subsets, transforms, tensors, loaders) is shared.

Ids are strings, so a dataset can encode views of an image in them (``"07/tile03"``, ``"07/crop2"``);
:meth:`~SegmentationDataModule.sample_group` then names the image, so that ``train_fraction`` draws whole
images. Random augmentations are seeded from torch's random generator, one draw per sample, so
``lightning.seed_everything`` and the DataLoader's per-worker seeds make them reproducible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from .splits import Fold, subset

#: ``(image H×W×C float32 in [0, 1], mask H×W int64)``
Sample = tuple[np.ndarray, np.ndarray]


class SegmentationDataset(Dataset):
    """Samples ``ids`` through ``load`` and an optional albumentations ``transform``.

    Items are dicts with ``image`` (float32 C×H×W), ``mask`` (int64 H×W) and ``id``. Before each sample the
    transform is reseeded with a number drawn from torch's global generator: albumentations (≥ 1.4.21)
    keeps its own generator, which ``seed_everything`` and the worker seeds would otherwise not reach.
    """

    def __init__(self, ids: Sequence[str], load: Callable[[str], Sample], transform: A.BasicTransform | None = None):
        self.ids = list(ids)
        self.load = load
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(self.ids[index])
        if self.transform is not None:
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
            "id": self.ids[index],
        }


class MultiPassBatchSampler(BatchSampler):
    """An epoch of the fewest whole passes over ``sampler`` that make at least ``min_steps`` batches.

    Each pass is :class:`~torch.utils.data.BatchSampler`'s (its last batch partial unless ``drop_last``): a
    batch never mixes two passes, so a step sees what it would see in an epoch of one pass. A
    :class:`~torch.utils.data.RandomSampler` draws a new permutation per pass; with one pass the batches are
    those of ``DataLoader(shuffle=True)`` under the same seed. The passes are counted from the sampler's own
    length, so under several processes (the :class:`~torch.utils.data.DistributedSampler` Lightning puts in,
    keeping ``min_steps``) each process's epoch has at least ``min_steps`` steps; such a sampler, which orders
    by its epoch (``set_epoch``, set by Lightning before every epoch), gets the epoch ``epoch · passes + pass``
    for each pass, so the passes differ there too.

    Why: under a step budget a small training set (CHASE 1/4: 4 images, one step) would otherwise end an epoch
    every step, and each epoch end costs Lightning's epoch hooks and the loader's restart, which waits for a
    first batch with nothing prefetched (benchmarks/README.md).

    Raises:
        ValueError: ``min_steps`` < 1.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, min_steps: int = 1) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if min_steps < 1:
            raise ValueError(f"min_steps must be ≥ 1, got {min_steps}")
        self.min_steps = min_steps

    @property
    def passes(self) -> int:
        """Passes per epoch: ``ceil(min_steps / batches per pass)`` (1 for a pass of no batch)."""
        per_pass = super().__len__()
        return -(-self.min_steps // per_pass) if per_pass else 1

    def __iter__(self):
        passes = self.passes
        # Read when the epoch's first batch is asked for, after Lightning's set_epoch for this epoch. Not set
        # back afterwards: the iterator of an epoch is closed only once the next epoch's has started.
        epoch = self.sampler.epoch if hasattr(self.sampler, "set_epoch") else None
        for index in range(passes):
            if epoch is not None:
                self.sampler.set_epoch(epoch * passes + index)
            yield from super().__iter__()

    def __len__(self) -> int:
        return self.passes * super().__len__()


class SegmentationDataModule(L.LightningDataModule, ABC):
    """Base DataModule: fold ``fold`` of the dataset's splits, ``train_fraction`` of its training set.

    Args:
        data_dir: where the dataset's files are (unused by datasets that need none).
        fold: cross-validation fold, ``0 ≤ fold < num_folds``.
        train_fraction: share of the fold's training ids used, drawn nested with ``subset_seed``
            (1/8 ⊂ 1/4 ⊂ 1/2 ⊂ all).
        batch_size: training and evaluation batch size (4 in the paper).
        num_workers: DataLoader workers.
        augment: random crop (when ``crop_size`` is set) and horizontal flip for training, the paper's
            only augmentations; off gives the training images as they are.
        crop_size: side of the random training crop; ``None`` for no crop. Evaluation always sees whole images.
        subset_seed: seed of the training-fraction draw (fixed, so every run of a fraction sees the same images).
        ignore_index: mask value for unlabelled pixels, excluded from losses and metrics.
        min_epoch_steps: a training epoch is the fewest whole passes over the training set (each in a new
            random order) that make at least this many steps (in each process, under several); 1: one pass, the
            classic epoch. The data configs set their validation interval, so that a small training set does
            not end an epoch every step (:class:`MultiPassBatchSampler`); the epoch form
            (``configs/trainer/epochs.yaml``) sets 1.
    """

    #: class names, index order (the paper's tables); their number is the model's output channels
    class_names: ClassVar[tuple[str, ...]] = ()
    #: image channels (the model's input channels)
    in_channels: ClassVar[int] = 1
    #: classes of thin, tubular structures (vessels, membranes): the test also scores them with clDice
    curvilinear_classes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        data_dir: str | None = None,
        fold: int = 0,
        train_fraction: float = 1.0,
        batch_size: int = 4,
        num_workers: int = 0,
        augment: bool = True,
        crop_size: int | None = None,
        subset_seed: int = 0,
        ignore_index: int = 255,
        min_epoch_steps: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if min_epoch_steps < 1:
            raise ValueError(f"min_epoch_steps must be ≥ 1, got {min_epoch_steps}")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be ≥ 1 or None, got {crop_size}")
        if not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1], got {train_fraction}")
        if 0 <= ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} collides with a class index (num_classes={self.num_classes})"
            )
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.fold = fold
        self.train_fraction = train_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.crop_size = crop_size
        self.subset_seed = subset_seed
        self.ignore_index = ignore_index
        self.min_epoch_steps = min_epoch_steps
        self.datasets: dict[str, SegmentationDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # --- what a dataset supplies -------------------------------------------------------------------
    @abstractmethod
    def fold_ids(self) -> Fold:
        """Train, val and test ids of fold ``self.fold``."""

    @abstractmethod
    def load_sample(self, sample_id: str) -> Sample:
        """Image (H×W×C float32 in [0, 1]) and mask (H×W int64, classes and ``ignore_index``) of one id."""

    def sample_group(self, sample_id: str) -> str:
        """The unit that ``train_fraction`` draws: the id itself, or e.g. the image an id crops."""
        return sample_id

    @property
    def random_crop_size(self) -> int | None:
        """Side of the random crop the training transform draws (``crop_size``; a dataset may crop otherwise)."""
        return self.crop_size

    def train_transform(self) -> A.BasicTransform | None:
        """The paper's augmentation: a random ``random_crop_size`` crop (if set) and a horizontal flip (p = ½)."""
        if not self.augment:
            return None
        size = self.random_crop_size
        crop = [A.RandomCrop(size, size)] if size else []
        return A.Compose([*crop, A.HorizontalFlip(p=0.5)])

    # --- shared ------------------------------------------------------------------------------------
    def split_ids(self) -> Fold:
        """The fold's ids with the training set reduced to ``train_fraction``."""
        ids = self.fold_ids()
        groups = [self.sample_group(i) for i in ids["train"]]
        return {**ids, "train": subset(ids["train"], self.train_fraction, self.subset_seed, groups=groups)}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        ids = self.split_ids()
        self.datasets = {
            "train": SegmentationDataset(ids["train"], self.load_sample, self.train_transform()),
            "val": SegmentationDataset(ids["val"], self.load_sample),
            "test": SegmentationDataset(ids["test"], self.load_sample),
        }

    def _loader(self, split: str, **batching) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            **batching,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches, an epoch of whole passes with at least ``min_epoch_steps`` steps."""
        dataset = self.datasets["train"]
        batches = MultiPassBatchSampler(RandomSampler(dataset), self.batch_size, False, self.min_epoch_steps)
        return self._loader("train", batch_sampler=batches)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.batch_size, shuffle=False)
