"""The three file-backed DataModules on the real data: contents, splits, fractions; error paths on tiny fixtures.

The data come from ``$LIGHTNING_SEG_DATA``, default ``../shared/data`` next to the repository (where CI has
them); tests that need them are skipped, saying so, when the folder is absent. Decoded images are cached per
process by the library, so each dataset is decoded about once per session (the module fixture sets them up).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg.data import ChaseDataModule, Covid19DataModule, DrosophilaDataModule, check_folds
from lightning_seg.data.datasets import DATASETS, child_of
from lightning_seg.data.splits import SPLIT_DIR
from tests.conftest import DATA_DIR, REPO

needs_data = pytest.mark.usefixtures("require_data")

MODULES = DATASETS

#: fold-0 sample counts: Drosophila 12 images × 4 crops, 4 × 16 tiles, 4 × 16 tiles
COUNTS = {"drosophila": (48, 64, 64), "covid19": (70, 10, 20), "chase": (16, 6, 6)}

#: class shares in % from the README beside the data copies (Drosophila membrane = sum of its five values),
#: with a tolerance in percentage points: exact data up to the README's rounding for Drosophila (no
#: resizing), nearest-neighbour subsampling to 256×256 for COVID-19 and CHASE.
FREQUENCIES = {
    "drosophila": ([2.56 + 2.87 + 3.36 + 3.23 + 5.14, 5.38, 0.56, 2.85, 74.06], 0.02),
    "covid19": ([93.06, 2.25, 4.56, 0.13], 0.05),
    "chase": ([100 - 6.9, 6.9], 0.3),
}


def make(name: str, **kwargs):
    return MODULES[name](data_dir=str(DATA_DIR), **kwargs)


@pytest.fixture(scope="module")
def modules(require_data):
    """Fold 0 of each dataset, set up once (this decodes every image of the dataset into the cache)."""
    out = {}
    for name in MODULES:
        dm = make(name)
        dm.prepare_data()  # checksums against the committed manifest
        dm.setup()
        out[name] = dm
    return out


def class_counts(dm, ids) -> np.ndarray:
    counts = np.zeros(dm.num_classes + 1, dtype=np.int64)
    for sample_id in ids:
        _, mask = dm.load_sample(sample_id)
        counts[: dm.num_classes] += np.bincount(mask[mask != dm.ignore_index], minlength=dm.num_classes)
        counts[-1] += int((mask == dm.ignore_index).sum())
    return counts


# --- real data: contents ---------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("name", MODULES)
def test_counts_shapes_dtypes_and_classes(modules, name):
    dm = modules[name]
    ids = dm.split_ids()
    assert tuple(len(ids[s]) for s in ("train", "val", "test")) == COUNTS[name]
    assert dm.in_channels == (3 if name == "chase" else 1)
    for split in ("train", "val", "test"):
        item = dm.datasets[split][0]
        side = 224 if split == "train" and name != "drosophila" else 256  # random crops of the resized images
        assert item["image"].dtype == torch.float32 and item["mask"].dtype == torch.int64
        assert item["image"].shape == (dm.in_channels, side, side)
        assert item["mask"].shape == (side, side)
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    image, mask = dm.load_sample(ids["test"][0])  # read-only views of the cache in its types; items convert
    assert image.dtype == (np.uint8 if name == "drosophila" else np.float32) and image.ndim == 3
    assert mask.dtype == np.uint8 and not image.flags.writeable and not mask.flags.writeable
    assert set(np.unique(mask)) <= set(range(dm.num_classes)) | {dm.ignore_index}


def test_class_names_follow_the_paper_tables():
    assert DrosophilaDataModule.info.class_names == (
        "membrane",
        "mitochondria",
        "synapse",
        "glia/extracellular",
        "intracellular",
    )
    assert Covid19DataModule.info.class_names == ("background", "consolidation", "ground glass", "pleural effusion")
    assert ChaseDataModule.info.class_names == ("background", "retinal vessel")
    assert ChaseDataModule(data_dir="unused").class_names == ("background", "retinal vessel")


@needs_data
@pytest.mark.parametrize("name", MODULES)
def test_class_frequencies_match_the_readme(modules, name):
    """Every pixel once: the test sets of the five folds partition the data (Drosophila: all 320 tiles)."""
    dm = modules[name]
    ids = [i for fold in range(5) for i in make(name, fold=fold).fold_ids()["test"]]
    assert len(ids) == len(set(ids)) == {"drosophila": 320, "covid19": 100, "chase": 28}[name]
    counts = class_counts(dm, ids)
    shares = 100 * counts[:-1] / counts.sum()
    expected, tolerance = FREQUENCIES[name]
    np.testing.assert_allclose(shares, expected, atol=tolerance)
    assert (counts[:-1] > 0).all()


@needs_data
def test_covid_labels_at_native_resolution_are_exact():
    """Without resizing, the remapped classes reproduce the README's shares to its two decimals."""
    dm = make("covid19", image_size=None)
    counts = class_counts(dm, [f"{i:04d}" for i in range(100)])
    shares = 100 * counts / counts.sum()
    np.testing.assert_allclose(shares, [93.06, 2.25, 4.56, 0.13, 0.002], atol=0.0051)
    assert dm.load_sample("0001")[0].shape == (512, 512, 1)


@needs_data
def test_covid_unknown_pixels_become_ignore_index(modules):
    dm = modules["covid19"]
    with_unknown = [i for i in dm.all_keys() if (dm.load_sample(i)[1] == 255).any()]
    assert 10 <= len(with_unknown) <= 40  # 40 slices at 512²; nearest-neighbour keeps a share of them
    other = make("covid19", ignore_index=-100)
    mask = other.load_sample(with_unknown[0])[1]
    assert (mask == -100).any() and not (mask == 255).any()
    assert set(np.unique(mask)) <= {-100, 0, 1, 2, 3}


@needs_data
def test_drosophila_tiles_reassemble_the_image(modules):
    dm = modules["drosophila"]
    key = dm.fold_keys()["test"][0]
    whole_image, whole_mask = dm.load_sample(key)
    assert whole_image.shape == (1024, 1024, 1)
    tiles = [dm.load_sample(f"{key}/tile{t:02d}") for t in range(16)]
    rows = [np.concatenate([tiles[4 * r + c][0] for c in range(4)], axis=1) for r in range(4)]
    np.testing.assert_array_equal(np.concatenate(rows, axis=0), whole_image)
    rows = [np.concatenate([tiles[4 * r + c][1] for c in range(4)], axis=1) for r in range(4)]
    np.testing.assert_array_equal(np.concatenate(rows, axis=0), whole_mask)


@needs_data
def test_chase_and_covid_resize_with_area_by_default(modules):
    dm = modules["chase"]
    key = dm.all_keys()[0]
    native = np.asarray(Image.open(DATA_DIR / "chase" / "images" / f"{key}.jpg"), dtype=np.float64) / 255
    image, _ = dm.load_sample(key)
    assert image.shape == (256, 256, 3)
    assert abs(image.mean() - native.mean()) < 2e-3  # area resampling preserves the mean
    bilinear = make("chase", interpolation="bilinear", image_size=(128, 192), crop_size=96).load_sample(key)[0]
    assert bilinear.shape == (128, 192, 3)


# --- real data: splits and fractions ---------------------------------------------------------------
@pytest.mark.parametrize("name", MODULES)
def test_committed_split_files(name):
    payload = json.loads((SPLIT_DIR / f"{name}.json").read_text())
    keys = payload["ids"]
    groups = [payload["groups"][k] for k in keys] if "groups" in payload else None
    assert payload["dataset"] == name and payload["num_folds"] == len(payload["folds"]) == 5
    check_folds(payload["folds"], keys, groups)
    for fold in payload["folds"]:
        for part in fold.values():
            assert part == sorted(part)
    # the ids are exactly the images of the committed checksum manifest
    assert len(keys) == len(MODULES[name].info.manifest()) // 2
    sizes = [tuple(len(f[s]) for s in ("train", "val", "test")) for f in payload["folds"]]
    assert (
        sizes
        == {
            "drosophila": [(12, 4, 4)] * 5,
            "covid19": [(70, 10, 20)] * 5,
            "chase": [(16, 6, 6)] * 4 + [(18, 6, 4)],
        }[name]
    )
    if name == "chase":  # both eyes of a child always together
        assert all(payload["groups"][k] == child_of(k) for k in keys)
        for fold in payload["folds"]:
            for part in fold.values():
                assert {k[:-1] + "L" for k in part} | {k[:-1] + "R" for k in part} == set(part)
    if name == "drosophila":  # test sets are blocks of 4 consecutive sections
        for fold in payload["folds"]:
            first = int(fold["test"][0])
            assert fold["test"] == [f"{first + i:02d}" for i in range(4)] and first % 4 == 0


def test_make_splits_reproduces_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_splits", REPO / "scripts" / "make_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0
    assert module.main(["--out", str(tmp_path)]) == 0
    for name in MODULES:  # byte for byte: the committed files are the record of every fold
        assert (tmp_path / f"{name}.json").read_bytes() == (SPLIT_DIR / f"{name}.json").read_bytes()


@pytest.mark.parametrize(
    ("name", "fractions", "sizes"),
    [
        # Drosophila draws whole images: 12 → 6 / 3 / 2 images (round(1.5) = 2), 4 crops each
        ("drosophila", (1 / 2, 1 / 4, 1 / 8), (24, 12, 8)),
        ("covid19", (1 / 2, 1 / 4, 1 / 8), (35, 18, 9)),
        ("chase", (1 / 2, 1 / 4), (8, 4)),
    ],
)
def test_reduced_training_sets_are_nested_and_fixed(name, fractions, sizes):
    """Split ids only: no decoding, so no data needed."""
    full = MODULES[name](data_dir="unused", fold=2).split_ids()
    previous = set(full["train"])
    for fraction, size in zip(fractions, sizes, strict=True):
        ids = MODULES[name](data_dir="unused", fold=2, train_fraction=fraction).split_ids()
        again = MODULES[name](data_dir="unused", fold=2, train_fraction=fraction).split_ids()
        assert ids == again
        assert ids["val"] == full["val"] and ids["test"] == full["test"]
        assert len(ids["train"]) == size and set(ids["train"]) <= previous
        previous = set(ids["train"])
        if name == "drosophila":  # all four crops of a chosen image
            images = {i.split("/")[0] for i in ids["train"]}
            assert sorted(ids["train"]) == sorted(f"{k}/crop{c}" for k in images for c in range(4))
    other_seed = MODULES[name](data_dir="unused", fold=2, train_fraction=fractions[-1], subset_seed=1).split_ids()
    assert other_seed["train"] != ids["train"]


@needs_data
def test_images_are_decoded_once_per_process(modules, monkeypatch):
    calls = []
    original = Covid19DataModule.decode
    monkeypatch.setattr(Covid19DataModule, "decode", lambda self, key: calls.append(key) or original(self, key))
    dm = make("covid19", fold=3)
    dm.setup()
    dm.datasets["test"][0]
    assert calls == []


# --- error paths on tiny fixtures ------------------------------------------------------------------
def _covid_fixture(root: Path, image: Image.Image | bytes, label: Image.Image | None = None) -> Covid19DataModule:
    """One slice, not the 100 of the manifest: ``verify=False`` reads it without the checksum check."""
    folder = root / "covid19"
    (folder / "images").mkdir(parents=True)
    (folder / "labels_4class_derived").mkdir(parents=True)
    if isinstance(image, bytes):
        (folder / "images" / "tr_im_0000.png").write_bytes(image)
    else:
        image.save(folder / "images" / "tr_im_0000.png")
    label = label if label is not None else Image.fromarray(np.zeros((512, 512), np.uint8))
    label.save(folder / "labels_4class_derived" / "tr_mask_0000.png")
    return Covid19DataModule(data_dir=str(root), verify=False)


def test_missing_data_dir_names_the_path_and_the_fix(tmp_path):
    dm = DrosophilaDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        dm.setup()
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "drosophila") in message
    assert "lightning_seg.data.download fetch drosophila" in message and "LIGHTNING_SEG_DATA" in message
    assert "figshare" in message


def test_incomplete_data_dir_names_a_missing_file(tmp_path):
    _covid_fixture(tmp_path, Image.fromarray(np.zeros((512, 512), np.uint8)))
    with pytest.raises(
        FileNotFoundError, match=r"198 of 200 files missing .*covid19/images/tr_im_0001\.png.*fetch covid19"
    ):
        Covid19DataModule(data_dir=str(tmp_path)).setup()
    with pytest.raises(FileNotFoundError, match=r"tr_im_0001\.png not found.*fetch covid19"):  # unverified: when read
        Covid19DataModule(data_dir=str(tmp_path), verify=False).setup()


def test_default_data_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTNING_SEG_DATA", str(tmp_path))
    assert ChaseDataModule().root == tmp_path / "chase"
    monkeypatch.delenv("LIGHTNING_SEG_DATA")
    assert ChaseDataModule().root == Path("data") / "chase"


def test_corrupt_image_is_reported_with_its_path(tmp_path):
    dm = _covid_fixture(tmp_path, b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(ValueError, match=r"cannot decode .*tr_im_0000\.png.*corrupt"):
        dm.load_sample("0000")


def test_wrong_size_is_reported(tmp_path):
    dm = _covid_fixture(tmp_path, Image.fromarray(np.zeros((100, 120), np.uint8)))
    with pytest.raises(ValueError, match=r"tr_im_0000\.png: size 120×100 .*expected 512×512"):
        dm.load_sample("0000")


def test_wrong_mode_and_label_values_are_reported(tmp_path):
    dm = _covid_fixture(tmp_path / "a", Image.fromarray(np.zeros((512, 512, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"mode 'RGB', expected 'L'"):
        dm.load_sample("0000")
    label = np.zeros((512, 512), np.uint8)
    label[5, 5] = 7
    dm = _covid_fixture(tmp_path / "b", Image.fromarray(np.zeros((512, 512), np.uint8)), Image.fromarray(label))
    with pytest.raises(ValueError, match=r"tr_mask_0000\.png: label values \[7\]"):
        dm.load_sample("0000")


def test_fixture_sample_is_remapped_and_resized(tmp_path):
    label = np.zeros((512, 512), np.uint8)
    label[:256, :256], label[:256, 256:], label[256:, :256], label[256:, 256:] = 0, 1, 2, 3  # file: 1 GGO, 2 cons.
    label[1, 1] = 255  # unknown
    dm = _covid_fixture(tmp_path, Image.fromarray(np.full((512, 512), 255, np.uint8)), Image.fromarray(label))
    image, mask = dm.load_sample("0000")
    assert image.shape == (256, 256, 1) and np.allclose(image, 1.0)
    # table order: 0 background, 1 consolidation, 2 ground glass, 3 effusion; nearest takes input (2r+1, 2c+1)
    assert (mask[0, 100], mask[0, 200], mask[200, 0], mask[255, 255]) == (0, 2, 1, 3)
    assert mask[0, 0] == dm.ignore_index == 255
