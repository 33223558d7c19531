"""Content checked once per process before first use, whatever the route (the issue's case: setup() trusted
swapped or relabelled files); ``verify=False`` the only way around, and logged."""

from __future__ import annotations

import logging
import shutil

import pytest

import lightning_seg.data.manifest as manifest
from lightning_seg.data import ChaseDataModule, ChecksumError, clear_cache

needs_data = pytest.mark.usefixtures("require_data")


@pytest.fixture
def chase_copy(require_data, tmp_path):
    """A copy of the real CHASE files whose first two labels are swapped: valid files, wrong content."""
    shutil.copytree(require_data / "chase" / "images", tmp_path / "chase" / "images")
    shutil.copytree(require_data / "chase" / "labels", tmp_path / "chase" / "labels")
    labels = tmp_path / "chase" / "labels"
    a, b = labels / "Image_01L_1stHO.png", labels / "Image_01R_1stHO.png"
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    clear_cache()
    yield tmp_path
    clear_cache()


def test_setup_without_prepare_data_refuses_swapped_files(chase_copy):
    with pytest.raises(ChecksumError, match=r"2 file\(s\) .*chase/labels/Image_01L_1stHO\.png, .*Image_01R_1stHO\.png"):
        ChaseDataModule(data_dir=str(chase_copy)).setup()


def test_a_bare_load_sample_is_checked_too(chase_copy):
    with pytest.raises(ChecksumError, match="verify=False"):
        ChaseDataModule(data_dir=str(chase_copy)).load_sample("Image_05L")


def test_verify_false_is_the_only_way_around_and_is_logged(chase_copy, caplog):
    with caplog.at_level(logging.WARNING, logger="lightning_seg.data.manifest"):
        dm = ChaseDataModule(data_dir=str(chase_copy), verify=False)
        dm.setup()
        ChaseDataModule(data_dir=str(chase_copy), verify=False, fold=1).setup()
    warnings = [r.getMessage() for r in caplog.records if "verify=False" in r.getMessage()]
    assert len(warnings) == 1 and str(chase_copy / "chase") in warnings[0]
    assert len(dm.datasets["train"]) == 16


@needs_data
def test_files_are_hashed_once_per_process(require_data, tmp_path, monkeypatch):
    shutil.copytree(require_data / "chase", tmp_path / "chase")
    calls = []
    real = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda path: calls.append(path) or real(path))
    clear_cache()
    ChaseDataModule(data_dir=str(tmp_path)).setup()
    assert len(calls) == 56  # every image and label, once
    ChaseDataModule(data_dir=str(tmp_path), fold=3, image_size=128, crop_size=96).setup()  # decodes again
    ChaseDataModule(data_dir=str(tmp_path)).prepare_data()
    assert len(calls) == 56 + 56  # prepare_data always checks (it repairs); setup and decoding did not again
    clear_cache()
    ChaseDataModule(data_dir=str(tmp_path), fold=2).setup()
    assert len(calls) == 56 * 3
    clear_cache()
