"""The shared loaders: an epoch of several passes, each a fresh permutation, batches never mixing passes."""

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from lightning_seg.data import SyntheticDataModule
from lightning_seg.data.base import MultiPassBatchSampler


def batches(sampler) -> list[list[int]]:
    return [list(batch) for batch in sampler]


def passes_of(batch_list: list[list[int]], steps_per_pass: int) -> list[list[int]]:
    return [sum(batch_list[i : i + steps_per_pass], []) for i in range(0, len(batch_list), steps_per_pass)]


@pytest.mark.parametrize(
    ("size", "batch_size", "drop_last"), [(6, 4, False), (8, 4, False), (6, 4, True), (1, 4, False)]
)
def test_one_pass_is_the_shuffled_loader(size, batch_size, drop_last):
    data = list(range(size))
    torch.manual_seed(3)
    expected = [b.tolist() for b in DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=drop_last)]
    torch.manual_seed(3)
    sampler = MultiPassBatchSampler(RandomSampler(data), batch_size, drop_last, min_steps=1)
    assert [b.tolist() for b in DataLoader(data, batch_sampler=sampler)] == expected
    assert len(sampler) == len(expected)


@pytest.mark.parametrize(
    ("size", "batch_size", "drop_last", "sizes"), [(6, 4, False, [4, 2]), (6, 4, True, [4]), (8, 4, False, [4, 4])]
)
def test_passes_are_permutations_in_their_own_batches(size, batch_size, drop_last, sizes):
    torch.manual_seed(0)
    # the fewest passes with at least 4 · len(sizes) + 1 steps: 5
    sampler = MultiPassBatchSampler(RandomSampler(range(size)), batch_size, drop_last, min_steps=4 * len(sizes) + 1)
    out = batches(sampler)
    assert sampler.passes == 5 and len(out) == len(sampler) == 5 * len(sizes)
    assert [len(b) for b in out] == sizes * 5  # a partial batch ends each pass: no batch spans two
    orders = passes_of(out, len(sizes))
    for order in orders:
        assert len(set(order)) == len(order) and set(order) <= set(range(size))
        if not drop_last:
            assert sorted(order) == list(range(size))
    assert len({tuple(order) for order in orders}) > 1  # drawn afresh, not one order repeated


def test_the_same_seed_gives_the_same_epochs():
    def epochs(seed):
        torch.manual_seed(seed)
        sampler = MultiPassBatchSampler(RandomSampler(range(10)), 4, False, min_steps=9)  # 3 passes of 3
        return [batches(sampler) for _ in range(2)]

    assert epochs(1) == epochs(1)
    assert epochs(1) != epochs(2)
    first, second = epochs(1)
    assert first != second


def as_lightning_takes_them(sampler, epoch: int, open_iterators: list) -> list[list[int]]:
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
        for r in range(2):
            # pass k of epoch e is the DistributedSampler's epoch e·3 + k
            expected = []
            for k in range(3):
                reference = DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0)
                reference.set_epoch(epoch * 3 + k)
                expected += batches(BatchSampler(reference, 2, False))
            assert out[r] == expected
        for k in range(3):  # every pass splits the data between the two ranks
            assert sorted(sum(out[0][3 * k : 3 * k + 3] + out[1][3 * k : 3 * k + 3], [])) == data
        epochs.append(out)
    assert epochs[0] != epochs[1]


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


def test_min_steps_must_be_positive():
    with pytest.raises(ValueError, match="min_steps must be ≥ 1, got 0"):
        MultiPassBatchSampler(RandomSampler(range(3)), 2, False, min_steps=0)


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
