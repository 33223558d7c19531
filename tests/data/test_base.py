"""The shared training loader: epochs of several passes, orders and augmentations that follow from the run's seed
and the epoch alone (whatever the worker count, whatever else draws random numbers, after a resume), and the
paper's crop and flip read from one seed per sample."""

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from lightning_seg.data import SyntheticDataModule
from lightning_seg.data.base import (
    RUN_SEED_ENV,
    SEED_RANGE,
    MultiPassBatchSampler,
    RandomCropFlip,
    SeededRandomSampler,
    SegmentationDataset,
    as_item,
    resume_position,
    unshifted_epoch,
)


def batches(sampler) -> list[list[int]]:
    """The indices of each batch (the seeds dropped)."""
    return [[index for index, _ in batch] for batch in sampler]


def passes_of(batch_list: list[list[int]], steps_per_pass: int) -> list[list[int]]:
    return [sum(batch_list[i : i + steps_per_pass], []) for i in range(0, len(batch_list), steps_per_pass)]


# --- RandomCropFlip -------------------------------------------------------------------------------
# A 5×6 image (values = positions) and a 3² window: 3 tops, 4 lefts; seed = top + 3·left + 12·flip + 24·k.
@pytest.mark.parametrize(
    ("seed", "top", "left", "flipped"),
    [(0, 0, 0, False), (1, 1, 0, False), (3, 0, 1, False), (11, 2, 3, False), (12, 0, 0, True), (23, 2, 3, True)],
)
def test_the_seed_is_read_as_top_left_and_flip(seed, top, left, flipped):
    image = np.arange(30, dtype=np.float32).reshape(5, 6, 1)
    mask = np.arange(30).reshape(5, 6)
    window = (slice(top, top + 3), slice(left, left + 3))
    expected = mask[window][:, ::-1] if flipped else mask[window]
    for k in (0, 7):  # higher digits do not matter
        out_image, out_mask = RandomCropFlip(3)(image, mask, seed + 24 * k)
        np.testing.assert_array_equal(out_mask, expected)
        np.testing.assert_array_equal(out_image[..., 0], expected)  # the image gets the mask's window and flip
        assert np.shares_memory(out_mask, mask)  # views, no copy


def test_without_a_size_only_the_flip_is_drawn():
    image, mask = np.arange(12.0).reshape(3, 4, 1), np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(RandomCropFlip(None)(image, mask, 6)[1], mask)
    np.testing.assert_array_equal(RandomCropFlip(None)(image, mask, 7)[1], mask[:, ::-1])


def test_windows_and_flips_are_uniform_over_random_seeds():
    mask = np.arange(30).reshape(5, 6)
    counts: dict[tuple, int] = {}
    for seed in torch.randint(SEED_RANGE, (12000,), generator=torch.Generator().manual_seed(0)).tolist():
        out = RandomCropFlip(3)(mask[..., None], mask, seed)[1]
        key = (int(out.min()), bool(out[0, 0] > out[0, -1]))  # the window's first value and the flip
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 3 * 4 * 2  # every window, each flipped and not
    assert all(abs(n - 500) < 5 * np.sqrt(500) for n in counts.values())  # 12000 / 24 each, within 5 sd


@pytest.mark.parametrize(("size", "message"), [(0, "size must be ≥ 1 or None, got 0"), (-2, "got -2")])
def test_a_bad_window_size_is_refused(size, message):
    with pytest.raises(ValueError, match=message):
        RandomCropFlip(size)


def test_a_window_larger_than_the_sample_is_refused():
    with pytest.raises(ValueError, match=r"a 8² window does not fit a 5×6 sample"):
        RandomCropFlip(8)(np.zeros((5, 6, 1)), np.zeros((5, 6)), 0)


# --- SeededRandomSampler and MultiPassBatchSampler -------------------------------------------------
def test_the_seeded_order_depends_on_seed_and_epoch_alone_and_seeds_are_not_shifted_epochs():
    def order(seed: int, epoch: int) -> list[int]:
        sampler = SeededRandomSampler(range(11), seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    torch.manual_seed(5)  # torch's global generator plays no part
    assert sorted(order(4, 1)) == list(range(11)) and order(4, 1) == order(4, 1)
    assert len({tuple(order(seed, epoch)) for seed in range(3) for epoch in range(3)}) == 9
    assert isinstance(SeededRandomSampler(range(3), 0), RandomSampler)  # so Lightning shuffles under DDP


@pytest.mark.parametrize(
    ("size", "batch_size", "drop_last", "sizes"), [(6, 4, False, [4, 2]), (6, 4, True, [4]), (8, 4, False, [4, 4])]
)
def test_passes_are_permutations_in_their_own_batches(size, batch_size, drop_last, sizes):
    # the fewest passes with at least 4 · len(sizes) + 1 steps: 5
    sampler = MultiPassBatchSampler(SeededRandomSampler(range(size), 0), batch_size, drop_last, 4 * len(sizes) + 1)
    out = batches(sampler)
    assert sampler.passes == 5 and len(out) == len(sampler) == 5 * len(sizes)
    assert [len(b) for b in out] == sizes * 5  # a partial batch ends each pass: no batch spans two
    orders = passes_of(out, len(sizes))
    for k, order in enumerate(orders):
        assert len(set(order)) == len(order) and set(order) <= set(range(size))
        if not drop_last:
            assert sorted(order) == list(range(size))
        reference = SeededRandomSampler(range(size), 0)  # pass k of epoch 0: the sampler's epoch k
        reference.set_epoch(k)
        assert order == list(reference)[: len(order)]
    assert len({tuple(order) for order in orders}) > 1  # drawn afresh, not one order repeated


def test_every_item_carries_a_seed_and_the_seed_and_epoch_fix_everything():
    def epoch(seed: int, number: int) -> list[list[tuple[int, int]]]:
        sampler = SeededRandomSampler(range(10), seed)
        return list(MultiPassBatchSampler(sampler, 4, False, min_steps=9, start_epoch=number))  # 3 passes of 3

    first = epoch(1, 0)
    seeds = [s for batch in first for _, s in batch]
    assert all(0 <= s < SEED_RANGE for s in seeds) and len(set(seeds)) == len(seeds) == 30
    torch.manual_seed(123)  # torch's global generator plays no part
    assert epoch(1, 0) == first
    assert epoch(1, 1) != first and epoch(2, 0) != first


def test_a_sampler_without_seed_and_epoch_counts_as_seed_0_at_epoch_0():
    """Lightning's overfit_batches puts in a SequentialSampler: the data in order, the augmentations of seed 0."""
    plain = list(MultiPassBatchSampler(SequentialSampler(range(5)), 2, False, min_steps=6))
    assert [[i for i, _ in b] for b in plain] == [[0, 1], [2, 3], [4]] * 2
    seeded = list(MultiPassBatchSampler(SeededRandomSampler(range(5), 0), 2, False, min_steps=6))
    assert [s for b in plain for _, s in b] == [s for b in seeded for _, s in b]


def test_the_first_epoch_is_start_epoch_before_any_set_epoch():
    sampler = SeededRandomSampler(range(10), 7)
    started = list(MultiPassBatchSampler(sampler, 4, False, min_steps=6, start_epoch=3))
    reference = SeededRandomSampler(range(10), 7)
    batches_of_3 = MultiPassBatchSampler(reference, 4, False, min_steps=6)
    reference.set_epoch(3)
    assert started == list(batches_of_3)
    with pytest.raises(ValueError, match="start_epoch and start_batch must be ≥ 0, got -1 and 0"):
        MultiPassBatchSampler(sampler, 4, False, start_epoch=-1)
    with pytest.raises(ValueError, match="start_epoch and start_batch must be ≥ 0, got 0 and -2"):
        MultiPassBatchSampler(sampler, 4, False, start_batch=-2)


@pytest.mark.parametrize("distributed", [False, True])
def test_an_epoch_iterated_again_without_set_epoch_repeats_itself(distributed):
    """A loop of one's own over the loader, with no set_epoch between iterations, sees the same epoch each time;
    the sampler's epoch is back where it was (before, it read the last pass's epoch: 2 passes made epoch 2 into
    5, then 11, 23, ..., a number growing with every iteration)."""
    data = range(10)
    sampler = DistributedSampler(data, 1, 0, shuffle=True, seed=3) if distributed else SeededRandomSampler(data, 3)
    batches = MultiPassBatchSampler(sampler, 4, False, min_steps=6, start_epoch=2)  # 2 passes of 3 batches
    first = list(batches)
    assert sampler.epoch == 2 and list(batches) == first and sampler.epoch == 2
    sampler.set_epoch(3)
    assert list(batches) != first
    left = iter(batches)
    next(left)
    sampler.set_epoch(7)  # Lightning's next epoch before the old iterator is closed
    left.close()
    assert sampler.epoch == 7


@pytest.mark.parametrize("start_batch", [0, 1, 2, 5, 6])  # 6 batches per epoch: 2 passes of 3
def test_a_loader_resumed_inside_an_epoch_goes_on_from_the_next_batch(start_batch):
    """The first iteration leaves out the batches already trained, with the same (index, seed) pairs after them;
    the next epochs are whole."""
    whole = MultiPassBatchSampler(SeededRandomSampler(range(10), 7), 4, False, min_steps=6, start_epoch=3)
    resumed = MultiPassBatchSampler(SeededRandomSampler(range(10), 7), 4, False, 6, 3, start_batch)
    epoch_3 = list(whole)
    assert len(epoch_3) == len(resumed) == 6 and list(resumed) == epoch_3[start_batch:]
    for sampler in (whole, resumed):
        sampler.sampler.set_epoch(4)
    assert list(resumed) == list(whole) and len(list(whole)) == 6


def restored_trainer(epoch: tuple[int, int, int], batches: tuple[int, int, int, int], last: bool) -> L.Trainer:
    """A trainer whose fit loop holds a restored state: the epoch progress (ready, started, processed) and the
    batch progress (ready, started, processed, completed), in this epoch and in total alike."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    current = trainer.fit_loop.epoch_progress.current
    current.ready, current.started, current.processed = epoch
    progress = trainer.fit_loop.epoch_loop.batch_progress
    for counts in (progress.current, progress.total):
        counts.ready, counts.started, counts.processed, counts.completed = batches
    progress.is_last_batch = last
    return trainer


@pytest.mark.parametrize(
    ("epoch", "batches", "last", "position"),
    [
        ((0, 0, 0), (0, 0, 0, 0), False, (0, 0)),  # a new fit
        ((3, 3, 3), (8, 8, 8, 8), True, (3, 0)),  # saved at the end of epoch 2: epoch 3 from its first batch
        ((3, 3, 2), (5, 5, 5, 5), False, (2, 5)),  # SIGTERM after batch 5 of epoch 2: from batch 6
        ((3, 3, 2), (5, 5, 5, 4), False, (2, 5)),  # saved in on_train_batch_end of batch 5: Lightning counts it done
        ((3, 3, 2), (8, 8, 8, 7), True, (3, 0)),  # the same at the epoch's last batch: Lightning rolls over
        ((3, 3, 2), (5, 5, 4, 4), False, (2, 4)),  # saved inside training_step 5: Lightning runs it again
    ],
)
def test_the_resume_position_follows_lightnings_restart(epoch, batches, last, position):
    assert resume_position(restored_trainer(epoch, batches, last)) == position
    assert resume_position(None) == (0, 0)


def as_lightning_takes_them(sampler, epoch: int, open_iterators: list) -> list[list[tuple[int, int]]]:
    """One epoch in the order of Lightning's loop: ``set_epoch``, then the previous epoch's iterator (left open
    after exactly ``len()`` batches) is dropped, then ``len()`` batches of a new one."""
    sampler.sampler.set_epoch(epoch)
    if open_iterators:
        open_iterators.pop().close()
    iterator = iter(sampler)
    open_iterators.append(iterator)
    return [next(iterator) for _ in range(len(sampler))]


def test_distributed_passes_differ_and_every_epoch_is_new():
    data = list(range(12))
    ranks = [DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0) for r in range(2)]
    # 6 samples per rank, 3 batches of 2 per pass: 3 passes make the 7 steps asked for, in each process
    samplers = [MultiPassBatchSampler(s, 2, False, min_steps=7) for s in ranks]
    assert [(s.passes, len(s)) for s in samplers] == [(3, 9), (3, 9)]
    epochs, open_iterators = [], [[], []]
    for epoch in (0, 1):
        out = [as_lightning_takes_them(s, epoch, open_iterators[r]) for r, s in enumerate(samplers)]
        indices = [[[i for i, _ in batch] for batch in rank] for rank in out]
        for r in range(2):
            # pass k of epoch e is the DistributedSampler's epoch e·3 + k
            expected = []
            for k in range(3):
                reference = DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0)
                reference.set_epoch(unshifted_epoch(0, epoch * 3 + k))
                expected += [list(b) for b in BatchSampler(reference, 2, False)]
            assert indices[r] == expected
        for k in range(3):  # every pass splits the data between the two ranks
            assert sorted(sum(indices[0][3 * k : 3 * k + 3] + indices[1][3 * k : 3 * k + 3], [])) == data
        seeds = [[s for batch in rank for _, s in batch] for rank in out]
        assert not set(seeds[0]) & set(seeds[1])  # the ranks draw their own augmentations
        epochs.append(out)
    assert epochs[0] != epochs[1]


def test_distributed_orders_of_two_seeds_are_not_shifted_passes_of_each_other():
    """torch's DistributedSampler orders by seed + epoch: given pass epochs as they are, seed 1's pass p would be
    seed 0's pass p + 1 (`unshifted_epoch` hashes them)."""
    data = list(range(16))

    def passes(seed: int) -> list[list[int]]:
        sampler = MultiPassBatchSampler(DistributedSampler(data, 2, 0, shuffle=True, seed=seed), 8, False, min_steps=6)
        return passes_of(batches(sampler), 1)

    zero, one = passes(0), passes(1)
    assert len(zero) == 6 and all(sorted(p) != p for p in zero)
    assert not any(a == b for a in one for b in zero)  # no pass of seed 1 is any pass of seed 0
    assert passes(0) == zero  # and each seed's passes are fixed


def test_lightning_keeps_min_steps_when_it_puts_in_a_distributed_sampler():
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader

    dm = SyntheticDataModule(num_images=40, image_size=16, train_fraction=0.25, min_epoch_steps=9)
    dm.setup()
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()  # as Lightning calls the hook, recording the arguments
    assert len(loader) == 10  # 6 images, 2 steps per pass, 5 passes
    rank = _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=0))
    assert isinstance(rank.batch_sampler, MultiPassBatchSampler) and rank.batch_sampler.min_steps == 9
    assert len(rank) == 9  # 3 images per process, 1 step per pass: 9 passes
    batch = next(iter(rank))  # (index, seed) pairs that load
    assert batch["image"].shape == (3, 1, 16, 16) and len(set(batch["id"])) == 3


def test_min_steps_must_be_positive():
    with pytest.raises(ValueError, match="min_steps must be ≥ 1, got 0"):
        MultiPassBatchSampler(SeededRandomSampler(range(3), 0), 2, False, min_steps=0)


# --- as_item: the conversion after the crop --------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (np.array([[[0], [51]], [[255], [128]]], np.uint8), [[[0.0, 0.2], [1.0, 128 / 255]]]),  # uint8: value / 255
        (np.array([[[0.5, 0.25]]], np.float32), [[[0.5]], [[0.25]]]),  # float32 as it is, channels first
        (np.array([[[0.5]]], np.float64), [[[0.5]]]),
    ],
)
def test_an_item_is_float32_channels_first_and_uint8_is_divided_by_255(image, expected):
    item = as_item(image, np.zeros(image.shape[:2], np.uint8), "a")
    assert item["image"].dtype == torch.float32 and item["mask"].dtype == torch.int64 and item["id"] == "a"
    torch.testing.assert_close(item["image"], torch.tensor(expected), rtol=0, atol=0)


def test_uint8_items_equal_a_conversion_before_the_crop():
    """Converting the crop gives the values that converting the whole image and cropping it gave."""
    whole = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    whole_mask = np.zeros((9, 7), np.uint8)
    crop, mask = RandomCropFlip(4)(whole, whole_mask, seed=12345)
    converted_first, _ = RandomCropFlip(4)(whole.astype(np.float32) / np.float32(255.0), whole_mask, seed=12345)
    assert torch.equal(as_item(crop, mask, "a")["image"], torch.from_numpy(converted_first.transpose(2, 0, 1).copy()))


def test_items_never_share_memory_with_read_only_samples():
    image, mask = np.full((4, 4, 1), 0.5, np.float32), np.ones((4, 4), np.int64)
    image.flags.writeable = mask.flags.writeable = False  # as the file datasets' cache holds them
    dataset = SegmentationDataset(["a"], lambda _: (image, mask))
    item = dataset[0]
    item["image"].zero_(), item["mask"].zero_()  # a user's in-place transform of a batch
    assert (dataset[0]["image"] == 0.5).all() and (dataset[0]["mask"] == 1).all()


# --- the training loader of a data module ----------------------------------------------------------
def training_epochs(
    monkeypatch, num_workers: int, epochs: range, draws_between_steps: bool = False, resumed: bool = False
) -> list:
    """The images and masks of the training batches of ``epochs``, from a fresh data module with random crops and
    flips, asked for in Lightning's order: the loader is made and iterated once (its workers fetch ahead), then
    ``set_epoch`` comes before each epoch's batches. ``resumed``: the loader is made by a trainer that resumes at
    ``epochs[0]``."""
    monkeypatch.setenv(RUN_SEED_ENV, "3")
    dm = SyntheticDataModule(num_images=20, image_size=16, crop_size=8, num_workers=num_workers, min_epoch_steps=4)
    dm.setup()
    if resumed:
        dm.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        dm.trainer.fit_loop.epoch_progress.current.processed = epochs[0]
    loader = dm.train_dataloader()
    iterator = iter(loader)  # FitLoop.setup_data, before the first set_epoch
    out = []
    for epoch in epochs:
        loader.batch_sampler.sampler.set_epoch(epoch)  # FitLoop.on_advance_start
        if epoch != epochs[0]:
            iterator = iter(loader)  # TrainingEpochLoop.on_run_start, from the second epoch on
        for batch in iterator:
            out.append((batch["id"], batch["image"], batch["mask"]))
            if draws_between_steps:
                torch.rand(5)  # e.g. dropout in the model
    return out


def assert_same_batches(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (ids_a, image_a, mask_a), (ids_b, image_b, mask_b) in zip(first, second, strict=True):
        assert ids_a == ids_b and torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)


def test_training_batches_do_not_depend_on_the_worker_count_or_other_draws(monkeypatch):
    torch.manual_seed(0)
    in_process = training_epochs(monkeypatch, 0, range(3))
    torch.manual_seed(1)  # the global generator's state plays no part either
    assert_same_batches(in_process, training_epochs(monkeypatch, 2, range(3), draws_between_steps=True))
    assert_same_batches(in_process, training_epochs(monkeypatch, 0, range(3), draws_between_steps=True))
    crops = [image for _, images, _ in in_process for image in images]
    # 12 images seen 6 times each, 162 windows and flips per image: a few repeats by chance, most crops new
    assert len({tuple(c.flatten().tolist()) for c in crops}) > 0.9 * len(crops) == 0.9 * 72


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_run_sees_the_batches_of_an_unstopped_one(monkeypatch, num_workers):
    unstopped = training_epochs(monkeypatch, 0, range(3))
    steps_per_epoch = len(unstopped) // 3
    resumed = training_epochs(monkeypatch, num_workers, range(1, 3), resumed=True)
    assert_same_batches(unstopped[steps_per_epoch:], resumed)


def test_without_a_run_seed_the_order_is_seed_0s_and_says_so(monkeypatch, caplog):
    monkeypatch.delenv(RUN_SEED_ENV, raising=False)
    dm = SyntheticDataModule(num_images=20, image_size=16)
    dm.setup()
    with caplog.at_level("WARNING", logger="lightning_seg.data.base"):
        sampler = dm.train_dataloader().batch_sampler.sampler
    assert sampler.seed == 0 and "SyntheticDataModule's training order: no run seed is set" in caplog.text


@pytest.mark.parametrize(
    ("fraction", "min_epoch_steps", "steps"),
    [
        (1.0, 1, 6),  # 24 training images, 6 steps of 4: one pass
        (1.0, 9, 12),  # two passes
        (0.125, 1, 1),  # 3 images: one step
        (0.125, 9, 9),
        (0.25, 9, 10),  # 6 images, 2 steps per pass: 5 passes
    ],
)
def test_an_epoch_is_the_fewest_passes_with_min_epoch_steps(fraction, min_epoch_steps, steps):
    dm = SyntheticDataModule(num_images=40, image_size=16, train_fraction=fraction, min_epoch_steps=min_epoch_steps)
    dm.setup()
    loader = dm.train_dataloader()
    assert len(loader) == steps
    assert len(list(loader)) == steps
    assert len(dm.val_dataloader()) == -(-len(dm.datasets["val"]) // 4)  # evaluation: one pass, in order


def test_min_epoch_steps_must_be_positive():
    with pytest.raises(ValueError, match="min_epoch_steps must be ≥ 1, got 0"):
        SyntheticDataModule(min_epoch_steps=0)
