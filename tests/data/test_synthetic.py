"""The synthetic DataModule and the split helpers it shares with the real datasets."""

import numpy as np
import pytest
import torch

from lightning_seg.data import SyntheticDataModule, check_folds, make_folds, render_sample, subset


def test_render_is_deterministic_by_seed_and_index():
    a_img, a_mask = render_sample(3, seed=1, image_size=48)
    b_img, b_mask = render_sample(3, seed=1, image_size=48)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = render_sample(3, seed=2, image_size=48)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (48, 48, 1) and a_img.dtype == np.float32 and a_mask.dtype == np.int64
    assert 0.0 <= a_img.min() and a_img.max() <= 1.0


def test_classes_are_strongly_imbalanced():
    masks = np.stack([render_sample(i, image_size=64)[1] for i in range(40)])
    freq = np.bincount(masks.ravel(), minlength=4) / masks.size
    assert set(np.unique(masks)) == {0, 1, 2, 3}
    assert freq[0] > 0.6  # background dominates
    assert freq[0] > freq[1] > freq[2] > freq[3] > 0.005  # thin curves and small blobs are rare
    assert freq[3] < 0.05


def test_datamodule_splits_fractions_and_batches():
    dm = SyntheticDataModule(num_images=40, image_size=32, fold=2, train_fraction=0.25)
    dm.setup()
    folds = [SyntheticDataModule(num_images=40, fold=k).fold_ids() for k in range(5)]
    check_folds(folds, [f"{i:04d}" for i in range(40)])
    full = SyntheticDataModule(num_images=40, fold=2).split_ids()["train"]
    assert set(dm.split_ids()["train"]) <= set(full)
    assert len(dm.datasets["train"]) == round(0.25 * len(full))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 32, 32) and batch["mask"].dtype == torch.int64
    assert dm.num_classes == 4 and dm.class_names[0] == "background"


def test_augmentation_is_crop_and_flip_only():
    dm = SyntheticDataModule(num_images=10, num_folds=2, image_size=32, crop_size=16)
    dm.setup()
    item = dm.datasets["train"][0]
    assert item["image"].shape == (1, 16, 16) and item["mask"].shape == (16, 16)
    assert repr(dm.train_augmentation()) == "RandomCropFlip(size=16)"
    assert SyntheticDataModule(augment=False).train_augmentation() is None
    assert dm.datasets["val"][0]["image"].shape == (1, 32, 32)


def test_make_folds_keeps_groups_together_and_partitions_tests():
    ids = [f"img{i:02d}{eye}" for i in range(14) for eye in "LR"]
    groups = [i[:5] for i in ids]
    folds = make_folds(ids, num_folds=5, num_val=4, groups=groups, seed=0)
    check_folds(folds, ids, groups)
    assert all(len(f["val"]) == 4 for f in folds)


def test_check_folds_rejects_overlap_and_split_groups():
    ids = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="overlap"):
        check_folds([{"train": ["a", "b"], "val": ["b"], "test": ["c", "d"]}], ids)
    with pytest.raises(ValueError, match="in both train and test"):
        check_folds([{"train": ["a", "b"], "val": [], "test": ["c", "d"]}], ids, groups=["g1", "g2", "g2", "g3"])


def test_subset_is_nested_and_seeded():
    ids = [f"{i:03d}" for i in range(70)]
    half, quarter, eighth = (subset(ids, f, seed=0) for f in (0.5, 0.25, 0.125))
    assert set(eighth) < set(quarter) < set(half)
    assert (len(half), len(quarter), len(eighth)) == (35, 18, 9)
    assert subset(ids, 0.25, seed=1) != quarter
    with pytest.raises(ValueError, match="train_fraction"):
        subset(ids, 0.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="fold must lie in"):
        SyntheticDataModule(fold=5)
    with pytest.raises(ValueError, match="collides with a class index"):
        SyntheticDataModule(ignore_index=2)
