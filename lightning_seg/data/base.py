"""One mechanism for every dataset: a fold's split, a nested training fraction, augmentation, loaders.

A dataset subclasses :class:`SegmentationDataModule` and supplies three things: its class names and
channel count, :meth:`~SegmentationDataModule.fold_ids` (train/val/test ids of the configured fold) and
:meth:`~SegmentationDataModule.load_sample` (one image and its mask, as NumPy arrays); the last two are
abstract. Everything else (subsets, augmentation, tensors, loaders) is shared.

Ids are strings, so a dataset can encode views of an image in them (``"07/tile03"``, ``"07/crop2"``);
:meth:`~SegmentationDataModule.sample_group` then names the image, so that ``train_fraction`` draws whole
images.

Every random draw of a training epoch (the order of each pass and each sample's augmentation) is a function of
the run's seed and the epoch alone (:class:`SeededRandomSampler`, :class:`MultiPassBatchSampler`), made in
the training process: the same batches whatever ``num_workers`` is, whatever else draws from torch's generator
during training, and after a resume from an epoch end.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from .splits import Fold, subset

log = logging.getLogger(__name__)

#: ``(image H×W×C, mask H×W)``: the image float32 in [0, 1] or uint8 (read as value / 255), the mask an integer
#: array of class indices and ``ignore_index``; either may be a read-only view of a cached array. The conversion to
#: float32 and int64 tensors is made by :func:`as_item`, after the training crop.
Sample = tuple[np.ndarray, np.ndarray]
#: a training augmentation: ``(image, mask, seed) -> (image, mask)``, every random choice read from ``seed``
Augmentation = Callable[[np.ndarray, np.ndarray, int], Sample]
#: the per-sample augmentation seeds are uniform over ``[0, SEED_RANGE)``
SEED_RANGE = 2**62
#: environment variable in which ``lightning.seed_everything`` leaves the run's seed
RUN_SEED_ENV = "PL_GLOBAL_SEED"


def run_seed(user: str) -> int:
    """The run's seed, as ``lightning.seed_everything`` set it (``$PL_GLOBAL_SEED``); 0, with a warning naming
    ``user``, when none was set (a fixed fallback, so that a resumed run draws what the stopped one did)."""
    seed = os.environ.get(RUN_SEED_ENV)
    if seed is None:
        log.warning("%s: no run seed is set (seed_everything): using seed 0", user)
        return 0
    return int(seed)


def mixed_seed(*entropy: int) -> int:
    """A 64-bit seed mixed from the non-negative integers ``entropy`` by NumPy's ``SeedSequence``: nearby inputs
    (seed 1 at epoch 0, seed 0 at epoch 1) give unrelated seeds."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0])


def seeded_generator(*entropy: int) -> torch.Generator:
    """A torch generator seeded by :func:`mixed_seed` of ``entropy``: unrelated streams for nearby inputs."""
    return torch.Generator().manual_seed(mixed_seed(*entropy))


def unshifted_epoch(seed: int, epoch: int) -> int:
    """The epoch to give a sampler that orders by ``seed + epoch`` (torch's ``DistributedSampler``, which Lightning
    puts in under several processes): :func:`mixed_seed` of both, below ``2**62``. Given the epoch itself, seed
    ``s + 1`` at epoch ``e`` would repeat the order of seed ``s`` at epoch ``e + 1``: replicate runs of seeds 0, 1 and
    2 would see one sequence of orders, shifted."""
    return mixed_seed(seed, epoch) >> 2


def epoch_unfinished(progress) -> bool:
    """Whether the fit loop's epoch ``progress`` (``fit_loop.epoch_progress.current``) stopped inside an epoch: a state
    saved mid-epoch (a ``SIGTERM``), not at an epoch end."""
    return progress.ready != progress.processed or progress.started != progress.processed


def resume_position(trainer: L.Trainer | None) -> tuple[int, int]:
    """The epoch a training loader starts at, and the batches of it already trained: ``(0, 0)`` for a new fit, the
    restored epoch for a resumed one, with the batches processed before a stop inside that epoch.

    Read when the loader is made, from the restored loop state before Lightning's restart adjusts it, with the rule
    of that adjustment (``TrainingEpochLoop.reset``): it asks for the batches after the ``processed`` ones, and a
    state saved after the last batch's ``processed`` but before its ``completed`` (``on_train_batch_end``) rolls
    over to the next epoch (``FitLoop.reset``)."""
    if trainer is None:
        return 0, 0
    progress = trainer.fit_loop.epoch_progress.current
    if not epoch_unfinished(progress):
        return progress.processed, 0
    batches = trainer.fit_loop.epoch_loop.batch_progress
    total = batches.total
    if batches.is_last_batch and total.ready == total.started == total.processed == total.completed + 1:
        return progress.processed + 1, 0
    return progress.processed, batches.current.processed


def global_draw() -> int:
    """One non-negative 63-bit integer from torch's global generator (as torch's own samplers draw their seeds)."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class RandomCropFlip:
    """The paper's augmentation: a random ``size``×``size`` window and a horizontal flip with probability ½.

    Every choice is read from one integer ``seed``, uniform over ``[0, SEED_RANGE)``, as digits in mixed radix:
    the window's top row ``seed mod (H − size + 1)``, then its left column, then the flip (the next digit odd:
    flipped). Each digit is uniform up to a relative bias below ``H · W · 2 / SEED_RANGE`` (< 1e-12 for images up
    to 1024²). Image and mask get the same window and flip; the results are views of the inputs (no copy).

    Args:
        size: side of the window; ``None``: no crop, the flip only.

    Raises:
        ValueError: ``size`` < 1, or a sample smaller than the window (the message names both sizes).

    Example:
        >>> image, mask = np.zeros((8, 8, 1), np.float32), np.zeros((8, 8), np.int64)
        >>> [a.shape for a in RandomCropFlip(4)(image, mask, seed=12345)]
        [(4, 4, 1), (4, 4)]
    """

    def __init__(self, size: int | None) -> None:
        if size is not None and size < 1:
            raise ValueError(f"RandomCropFlip: size must be ≥ 1 or None, got {size}")
        self.size = size

    def __call__(self, image: np.ndarray, mask: np.ndarray, seed: int) -> Sample:
        if self.size is not None:
            height, width = mask.shape
            if self.size > min(height, width):
                raise ValueError(f"RandomCropFlip: a {self.size}² window does not fit a {height}×{width} sample")
            seed, top = divmod(seed, height - self.size + 1)
            seed, left = divmod(seed, width - self.size + 1)
            image = image[top : top + self.size, left : left + self.size]
            mask = mask[top : top + self.size, left : left + self.size]
        if seed % 2:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def as_item(image: np.ndarray, mask: np.ndarray, sample_id: str) -> dict:
    """A dataset item: ``image`` (H×W×C :data:`Sample` image, possibly a view) as float32 C×H×W, uint8 divided by 255,
    ``mask`` as int64 H×W, each copied once into memory of its own (never a view of a cached array), and the
    sample's ``id``.

    Example:
        >>> item = as_item(np.full((2, 3, 1), 255, np.uint8), np.zeros((2, 3), np.uint8), "a")
        >>> item["image"].shape, item["image"].max().item(), item["mask"].dtype
        (torch.Size([1, 2, 3]), 1.0, torch.int64)
    """
    chw = image.transpose(2, 0, 1).astype(np.float32, order="C")
    if image.dtype == np.uint8:
        chw /= np.float32(255.0)
    return {
        "image": torch.from_numpy(chw),
        "mask": torch.from_numpy(mask.astype(np.int64, order="C")),
        "id": sample_id,
    }


class SegmentationDataset(Dataset):
    """Samples ``ids`` through ``load`` and an optional ``augmentation``.

    Items are dicts with ``image`` (float32 C×H×W), ``mask`` (int64 H×W) and ``id``. A key is an index, or
    ``(index, seed)`` as :class:`MultiPassBatchSampler` gives them: the seed is the augmentation's. An index
    alone (a look at one sample) draws the seed from torch's global generator.
    """

    def __init__(self, ids: Sequence[str], load: Callable[[str], Sample], augmentation: Augmentation | None = None):
        self.ids = list(ids)
        self.load = load
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(self.ids[index])
        if self.augmentation is not None:
            image, mask = self.augmentation(image, mask, global_draw() if seed is None else seed)
        return as_item(image, mask, self.ids[index])


class SeededRandomSampler(RandomSampler):
    """A random order of the data that depends on ``(seed, epoch)`` only: ``randperm`` under a generator seeded by
    both (:func:`seeded_generator`), so that the orders of two seeds never coincide at shifted epochs.

    Being a :class:`~torch.utils.data.RandomSampler`, it tells Lightning that the loader shuffles: under several
    processes Lightning puts in a ``DistributedSampler`` with the run's seed (which orders by ``seed + epoch``;
    :class:`MultiPassBatchSampler` gives it :func:`unshifted_epoch` s).

    Args:
        data_source: the dataset (only its length is used).
        seed: seed of every epoch's order.
    """

    def __init__(self, data_source: Sequence, seed: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch (and by :class:`MultiPassBatchSampler` for each pass)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(len(self.data_source), generator=seeded_generator(self.seed, self.epoch)).tolist()


class MultiPassBatchSampler(BatchSampler):
    """An epoch of the fewest whole passes over ``sampler`` that make at least ``min_steps`` batches, each item
    with the seed of its augmentation.

    Each pass is :class:`~torch.utils.data.BatchSampler`'s (its last batch partial unless ``drop_last``): a
    batch never mixes two passes, so a step sees what it would see in an epoch of one pass. The sampler (a
    :class:`SeededRandomSampler`, or the :class:`~torch.utils.data.DistributedSampler` Lightning puts in under
    several processes, keeping this sampler's arguments) orders by its ``seed`` and epoch; pass ``k`` of epoch
    ``e`` gets the epoch ``e · passes + k`` (a ``DistributedSampler`` its :func:`unshifted_epoch`), so every pass
    has an order of its own, and two seeds never share one. The batches hold ``(index,
    seed)`` pairs: the seeds, uniform over ``[0, SEED_RANGE)``, come from a generator seeded by ``(sampler seed,
    pass epoch, process rank)``. So an epoch's batches and augmentations follow from the run's seed and the epoch
    alone. The passes are counted from the sampler's own length, so under several processes each process's epoch
    has at least ``min_steps`` steps. A sampler without ``seed`` and ``epoch`` (the ``SequentialSampler`` that
    Lightning's ``overfit_batches`` puts in) counts as seed 0 at epoch 0.

    ``start_epoch`` is set on the sampler at once: a loader asked for at a resume, whose worker processes fetch the
    first batches before Lightning's ``set_epoch``, starts at the resumed epoch; its first iteration leaves out the
    ``start_batch`` batches of that epoch trained before a stop inside it (Lightning counts them as done and asks
    for the rest only), with the same draws for the batches that follow.

    Why: under a step budget a small training set (CHASE 1/4: 4 images, one step) would otherwise end an epoch
    every step, and each epoch end costs Lightning's epoch hooks and the loader's restart, which waits for a
    first batch with nothing prefetched (benchmarks/README.md). The seeds travel with the indices so that the
    loader's worker processes, which have generators of their own, draw nothing.

    Raises:
        ValueError: ``min_steps`` < 1, or ``start_epoch`` or ``start_batch`` < 0.
    """

    def __init__(
        self,
        sampler: Sampler,
        batch_size: int,
        drop_last: bool,
        min_steps: int = 1,
        start_epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if min_steps < 1:
            raise ValueError(f"min_steps must be ≥ 1, got {min_steps}")
        if start_epoch < 0 or start_batch < 0:
            raise ValueError(f"start_epoch and start_batch must be ≥ 0, got {start_epoch} and {start_batch}")
        self.min_steps = min_steps
        self.start_epoch = start_epoch
        self.start_batch = start_batch
        #: batches the next iteration leaves out (only the first iteration of a loader resumed mid-epoch)
        self._skip = start_batch
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(start_epoch)

    @property
    def passes(self) -> int:
        """Passes per epoch: ``ceil(min_steps / batches per pass)`` (1 for a pass of no batch)."""
        per_pass = super().__len__()
        return -(-self.min_steps // per_pass) if per_pass else 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        passes = self.passes
        # Read when the epoch's first batch is asked for, after Lightning's set_epoch for this epoch (or, for the
        # first epoch of a loader, start_epoch).
        epoch = getattr(self.sampler, "epoch", 0)
        seed, rank = getattr(self.sampler, "seed", 0), getattr(self.sampler, "rank", 0)
        skip, self._skip = self._skip, 0
        for index in range(passes):
            pass_epoch = epoch * passes + index
            if isinstance(self.sampler, DistributedSampler):  # it orders by seed + epoch
                self.sampler.set_epoch(unshifted_epoch(seed, pass_epoch))
            elif hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(pass_epoch)
            seeds = seeded_generator(seed, pass_epoch, rank)
            for batch in super().__iter__():
                # drawn for a skipped batch too: the batches after it get the seeds of an unstopped run
                batch_seeds = torch.randint(SEED_RANGE, (len(batch),), generator=seeds).tolist()
                if skip:
                    skip -= 1
                    continue
                yield list(zip(batch, batch_seeds, strict=True))
        # The epoch back, once every pass is drawn (an iterator left before its end, which is closed only after the
        # next epoch's set_epoch, leaves it alone): without a set_epoch in between (a loop of one's own over the
        # loader), the next iteration repeats this epoch, as a DistributedSampler's would; read again, the last
        # pass's epoch would grow by a factor of `passes` per iteration, and its seed mixing with it.
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

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
        """Image and mask of one id (:data:`Sample`: the image float32 in [0, 1] or uint8, the mask integer classes and
        ``ignore_index``; read-only views of a cache allowed, :func:`as_item` converts and copies)."""

    def sample_group(self, sample_id: str) -> str:
        """The unit that ``train_fraction`` draws: the id itself, or e.g. the image an id crops."""
        return sample_id

    @property
    def random_crop_size(self) -> int | None:
        """Side of the random crop the training augmentation draws (``crop_size``; a dataset may crop otherwise)."""
        return self.crop_size

    def train_augmentation(self) -> Augmentation | None:
        """The paper's augmentation: a random ``random_crop_size`` crop (if set) and a horizontal flip (p = ½)."""
        return RandomCropFlip(self.random_crop_size) if self.augment else None

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
            "train": SegmentationDataset(ids["train"], self.load_sample, self.train_augmentation()),
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
        """Shuffled batches, an epoch of whole passes with at least ``min_epoch_steps`` steps, in an order and with
        augmentations that follow from the run's seed (``seed_everything``) and the epoch
        (:class:`MultiPassBatchSampler`), starting where the trainer is (a resumed run's epoch and batch)."""
        dataset = self.datasets["train"]
        epoch, done = resume_position(self.trainer)
        sampler = SeededRandomSampler(dataset, run_seed(f"{type(self).__name__}'s training order"))
        batches = MultiPassBatchSampler(sampler, self.batch_size, False, self.min_epoch_steps, epoch, done)
        return self._loader("train", batch_sampler=batches)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", batch_size=self.batch_size, shuffle=False)
