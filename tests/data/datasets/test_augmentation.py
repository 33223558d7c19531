"""The paper's augmentation on the three datasets: random crop and horizontal flip.

Drosophila's fixed training patches (the paper's "prepared 48 training patches"): one position per
(patch seed, fold, image, index), nested across fractions, inside the image, the same in every epoch,
with a flip drawn anew each time; the fresh-random-crop mode; COVID-19 and CHASE crops of the resized images.
Patch positions need no data; the pixel checks read the real files.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from lightning_seg.data import ChaseDataModule, Covid19DataModule, DrosophilaDataModule, SegmentationDataset
from lightning_seg.data.base import as_item
from lightning_seg.data.datasets import RESIZED_CROP_SIZE
from tests.conftest import CONFIGS, DATA_DIR

needs_data = pytest.mark.usefixtures("require_data")


@pytest.fixture
def run_seed(monkeypatch):
    """Set the run's seed as ``seed_everything`` does, restored after the test."""

    def set_seed(seed: int) -> None:
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    return set_seed


def drosophila(**kwargs) -> DrosophilaDataModule:
    return DrosophilaDataModule(data_dir=str(DATA_DIR), **kwargs)


# --- fixed patches: positions (no data needed) -----------------------------------------------------
def test_fixed_patches_depend_on_fold_seed_and_image_only(run_seed):
    run_seed(5)
    patches = drosophila(fold=2).train_patches()
    assert len(patches) == 48 and patches == drosophila(fold=2).train_patches()
    assert len(set(patches.values())) == 48  # 48 distinct windows
    run_seed(6)
    assert drosophila(fold=2).train_patches() != patches  # another run seed: other patches
    assert drosophila(fold=2, patch_seed=5).train_patches() == patches  # an explicit seed wins over the run's
    # another fold: other positions for the same image and index
    dm3 = drosophila(fold=3, patch_seed=5)
    shared = set(dm3.fold_keys()["train"]) & {i.split("/")[0] for i in patches}
    assert shared and all(dm3.patch_origin(k, 0) != drosophila(fold=2, patch_seed=5).patch_origin(k, 0) for k in shared)


@pytest.mark.parametrize(
    "changed", [{"patch_seed": 6}, {"fold": 3}, {"crop_size": 512}, {"crop_size": 64, "image_size": (256, 256)}]
)
def test_a_remembered_patch_origin_follows_a_changed_setting(changed):
    dm = drosophila(fold=2, patch_seed=5, crop_size=128)
    first = dm.patch_origin("07", 1)
    assert dm.patch_origin("07", 1) == first  # remembered: the same again
    for name, value in changed.items():
        setattr(dm, name, value)
    fresh = drosophila(**{"fold": 2, "patch_seed": 5, "crop_size": 128, **changed})
    assert dm.patch_origin("07", 1) == fresh.patch_origin("07", 1) != first


def test_fixed_patches_follow_seed_everything(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test
    L.seed_everything(11, verbose=False)
    assert drosophila().resolved_patch_seed == 11
    assert drosophila().train_patches() == drosophila(patch_seed=11).train_patches()


def test_without_a_run_seed_patches_use_seed_0_and_say_so(run_seed, caplog):
    with caplog.at_level("WARNING", logger="lightning_seg.data.base"):
        assert drosophila().resolved_patch_seed == 0
    assert "drosophila: patch_seed=None: the fixed patches: no run seed is set" in caplog.text


@pytest.mark.parametrize("fold", range(5))
def test_fixed_patches_of_smaller_fractions_are_nested_and_inside_the_images(fold):
    previous = None
    for fraction in (1 / 8, 1 / 4, 1 / 2, 1.0):
        patches = drosophila(fold=fold, patch_seed=3, train_fraction=fraction).train_patches()
        assert len(patches) == 4 * {1 / 8: 2, 1 / 4: 3, 1 / 2: 6, 1.0: 12}[fraction]
        if previous is not None:
            assert previous.items() <= patches.items()  # the same ids at the same positions
        previous = patches
        for y, x in patches.values():
            assert 0 <= y <= 1024 - 256 and 0 <= x <= 1024 - 256


def test_patch_positions_cover_the_image():
    """Uniform over every position: over all images, folds and indices the corners spread over the whole range."""
    corners = np.array([drosophila(fold=f, patch_seed=0).patch_origin(f"{k:02d}", i) for f in range(5)
                        for k in range(20) for i in range(4)])  # fmt: skip
    assert corners.min() >= 0 and corners.max() <= 768
    assert corners.min(axis=0).max() < 60 and corners.max(axis=0).min() > 708  # 400 draws reach both ends


def test_patch_mode_options_are_checked():
    with pytest.raises(ValueError, match="fixed_patches=False draws a random patch .* augment=False"):
        drosophila(fixed_patches=False, augment=False)
    with pytest.raises(ValueError, match="crop_size must divide"):
        drosophila(crop_size=300)
    with pytest.raises(ValueError, match="needs crop_size set and fixed_patches=True"):
        drosophila(fixed_patches=False).train_patches()


# --- fixed patches: pixels -------------------------------------------------------------------------
@needs_data
def test_fixed_patches_are_the_same_windows_every_epoch_with_a_fresh_flip():
    dm = drosophila(fold=1, patch_seed=2)
    dm.setup()
    patches = dm.train_patches()
    sample_id = dm.datasets["train"].ids[5]
    (y, x), key = patches[sample_id], sample_id.split("/")[0]
    whole = as_item(*dm.load_sample(key), key)["image"]
    window = whole[:, y : y + 256, x : x + 256]
    seen = set()
    for epoch in range(12):
        L.seed_everything(epoch, verbose=False)
        image = dm.datasets["train"][5]["image"]
        assert torch.equal(image, window) or torch.equal(image, window.flip(-1))
        seen.add(torch.equal(image, window))
    assert seen == {True, False}  # flipped in some epochs, not in others
    plain = drosophila(fold=1, patch_seed=2, augment=False)
    plain.setup()
    assert plain.train_augmentation() is None and torch.equal(plain.datasets["train"][5]["image"], window)


# --- fresh random crops (the option) ---------------------------------------------------------------
def _is_window(whole: np.ndarray, crop: np.ndarray) -> bool:
    """Whether ``crop`` (h×w×C) is a sub-array of ``whole`` (candidates from its first row's first 32 pixels)."""
    size = crop.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(whole[..., 0], 32, axis=1)
    rows = rows[: whole.shape[0] - size + 1, : whole.shape[1] - size + 1]
    ys, xs = np.nonzero((rows == crop[0, :32, 0]).all(-1))
    return any(np.array_equal(whole[y : y + size, x : x + size], crop) for y, x in zip(ys, xs, strict=True))


@needs_data
def test_random_crops_are_fresh_each_time_and_reproducible_per_seed():
    dm = drosophila(fixed_patches=False)
    dm.setup()

    def items():
        return [dm.datasets["train"][i] for i in range(4)]

    L.seed_everything(7, verbose=False)
    first = items()
    L.seed_everything(7, verbose=False)
    again = items()
    L.seed_everything(8, verbose=False)
    other = items()
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True))
    assert first[0]["id"].split("/")[0] == first[3]["id"].split("/")[0]  # 4 crops of one image, all different
    assert not torch.equal(first[0]["image"], first[1]["image"])
    key = first[0]["id"].split("/")[0]
    whole = as_item(*dm.load_sample(key), key)["image"].permute(1, 2, 0).numpy()
    crop = first[0]["image"].permute(1, 2, 0).numpy()
    assert _is_window(whole, crop) or _is_window(whole, crop[:, ::-1])


@needs_data
def test_dataloader_workers_draw_different_random_crops():
    """Two workers cropping the same image draw different crops, and the same ones again under the same seed."""
    dm = drosophila(fixed_patches=False)
    same_image = SegmentationDataset(["05/crop0"] * 8, dm.load_sample, dm.train_augmentation())

    def batches():
        L.seed_everything(3, verbose=False)
        loader = DataLoader(same_image, batch_size=4, shuffle=False, num_workers=2)
        return [b["image"] for _, b in zip(range(2), loader, strict=True)]

    first, again = batches(), batches()
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(first[0][0], first[0][1])  # two random crops of the same image


# --- COVID-19 and CHASE: random crops of the resized images ----------------------------------------
@needs_data
@pytest.mark.parametrize("module", [Covid19DataModule, ChaseDataModule])
def test_resized_datasets_train_on_random_crops_and_evaluate_whole_images(module):
    dm = module(data_dir=str(DATA_DIR))
    dm.setup()
    assert dm.crop_size == RESIZED_CROP_SIZE == 224
    whole = dm.load_sample(dm.datasets["train"].ids[0])[0]
    assert whole.shape[:2] == (256, 256)
    crops = []
    for seed in range(8):
        L.seed_everything(seed, verbose=False)
        crop = dm.datasets["train"][0]["image"].permute(1, 2, 0).numpy()
        assert crop.shape == (224, 224, dm.in_channels)
        assert _is_window(whole, crop) or _is_window(whole, crop[:, ::-1])
        crops.append(crop)
    assert len({c.tobytes() for c in crops}) == 8  # a fresh window (and flip) each time
    assert dm.datasets["val"][0]["image"].shape[-2:] == dm.datasets["test"][0]["image"].shape[-2:] == (256, 256)
    plain = module(data_dir=str(DATA_DIR), augment=False)
    plain.setup()
    assert np.array_equal(plain.datasets["train"][0]["image"].permute(1, 2, 0).numpy(), whole)


def test_crop_larger_than_the_images_is_an_error():
    with pytest.raises(ValueError, match=r"crop_size=224 is larger than the 128×128 images of covid19"):
        Covid19DataModule(data_dir="unused", image_size=128)
    assert Covid19DataModule(data_dir="unused", image_size=128, crop_size=96).crop_size == 96


# --- the configs the grids use ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["drosophila", "covid19", "chase"])
def test_data_configs_use_the_paper_augmentation(name):
    init_args = yaml.safe_load((CONFIGS / "data" / f"{name}.yaml").read_text())["data"]["init_args"]
    assert init_args["augment"] is True
    if name == "drosophila":
        assert init_args["crop_size"] == 256 and init_args["fixed_patches"] is True and init_args["patch_seed"] is None
    else:
        assert init_args["crop_size"] == 224 and init_args["image_size"] == 256
    module = {"drosophila": DrosophilaDataModule, "covid19": Covid19DataModule, "chase": ChaseDataModule}[name]
    module(**{**init_args, "data_dir": "unused"})  # the config's options are valid together
