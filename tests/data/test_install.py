"""The staged, verified repair against a loopback mirror built from the real data.

The mirror's archives are what :func:`~lightning_seg.data.mirror.build_archives` writes from the project's
copies (the upstream layouts, and the project's own tar of the derived COVID-19 masks). Every failure case
checks that ``data_dir`` is exactly as it was (:func:`~tests.data.conftest.snapshot`: every path, its bytes
and mtime), and that verified files are never touched.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import lightning_seg.data.install as install
from lightning_seg.data import (
    ArchiveError,
    ChaseDataModule,
    ChecksumError,
    DownloadError,
    ExtractLimits,
    UnsafeArchiveError,
    ensure_dataset,
)
from lightning_seg.data.datasets import CHASE, COVID19, DATASETS, DROSOPHILA
from lightning_seg.data.install import archive_urls
from lightning_seg.data.manifest import check_files, sha256_file
from lightning_seg.data.mirror import build_archives
from tests.conftest import DATA_DIR
from tests.data.conftest import snapshot
from tests.data.test_archives import make_zip

needs_data = pytest.mark.usefixtures("require_data")
INFOS = [module.info for module in DATASETS.values()]
CHASE_ZIP = CHASE.archives[0].filename
DROSOPHILA_ZIP = DROSOPHILA.archives[0].filename
MASKS_TAR = COVID19.archives[1]


@pytest.fixture(scope="module")
def mirror(loopback, require_data):
    """``(folder, URL)`` of a mirror serving every archive, built from the real data."""
    folder, url = loopback.folder("good")
    for info in INFOS:
        build_archives(info, DATA_DIR, folder)
    return folder, url


@pytest.fixture(scope="module")
def installed(mirror, tmp_path_factory):
    """A complete, verified ``data_dir`` fetched once through the mirror; tests copy it."""
    data_dir = tmp_path_factory.mktemp("installed")
    for info in INFOS:
        ensure_dataset(info, data_dir, download=True, mirror=mirror[1], progress=False, timeout=10)
    return data_dir


def copy_of(installed: Path, tmp_path: Path, *names: str) -> Path:
    data_dir = tmp_path / "data"
    for name in names:
        shutil.copytree(installed / name, data_dir / name)
    return data_dir


def altered_zip(src: Path, dest: Path, member_suffix: str) -> Path:
    """``src`` with the last byte of the member ending in ``member_suffix`` changed (a well-formed zip)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dest, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            new.writestr(info, data[:-1] + bytes([data[-1] ^ 1]) if info.filename.endswith(member_suffix) else data)
    return dest


def fetch(info, data_dir, mirror_url, **kwargs):
    return ensure_dataset(info, data_dir, download=True, mirror=mirror_url, progress=False, timeout=10, **kwargs)


# --- the happy path --------------------------------------------------------------------------------
@needs_data
def test_fetch_is_verified_idempotent_and_leaves_only_the_files(loopback, mirror, installed, tmp_path):
    for info in INFOS:
        assert check_files(info, installed) == ([], [])
    # only the manifests' files: no staging folder, no downloads, no other member of the archives
    files = sorted(str(p.relative_to(installed)) for p in installed.rglob("*") if not p.is_dir())
    assert files == sorted(n for info in INFOS for n in info.manifest())
    assert (installed / "chase" / "labels" / "Image_01L_1stHO.png").stat().st_mode & 0o777 == 0o644
    loopback.requests.clear()
    for info in INFOS:
        fetch(info, installed, mirror[1])
    assert loopback.requests == []  # nothing fetched again
    dm = ChaseDataModule(data_dir=str(installed))
    reference = ChaseDataModule(data_dir=str(DATA_DIR))
    for a, b in zip(dm.load_sample("Image_05R"), reference.load_sample("Image_05R"), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_data
def test_repair_fetches_only_what_is_needed_and_never_touches_verified_files(loopback, mirror, installed, tmp_path):
    data_dir = copy_of(installed, tmp_path, "chase", "covid19")
    (data_dir / "covid19" / "labels_4class_derived" / "tr_mask_0042.png").unlink()
    victim = data_dir / "chase" / "images" / "Image_07L.jpg"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ChecksumError, match=r"chase/images/Image_07L\.jpg.*delete it and fetch it again"):
        ensure_dataset(CHASE, data_dir)
    with pytest.raises(FileNotFoundError, match=r"tr_mask_0042\.png"):
        ensure_dataset(COVID19, data_dir)
    before = snapshot(data_dir)
    # the mirror's copy of a file that is good here is altered: it is never extracted, so the repair succeeds
    bad_folder, bad_url = loopback.folder("altered-good-file")
    altered_zip(mirror[0] / CHASE_ZIP, bad_folder / CHASE_ZIP, "/Image_01L.jpg")
    loopback.requests.clear()
    fetch(CHASE, data_dir, bad_url)
    fetch(COVID19, data_dir, mirror[1])
    assert sorted(loopback.requests) == sorted([f"/altered-good-file/{CHASE_ZIP}", f"/good/{MASKS_TAR.filename}"])
    after = snapshot(data_dir)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"chase/images/Image_07L.jpg", "covid19/labels_4class_derived/tr_mask_0042.png"}
    assert all(check_files(info, data_dir) == ([], []) for info in (CHASE, COVID19))


@needs_data
def test_prepare_data_downloads_when_asked(mirror, tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        ChaseDataModule(data_dir=str(tmp_path)).prepare_data()
    ChaseDataModule(data_dir=str(tmp_path), download=True, mirror=mirror[1]).prepare_data()
    assert check_files(CHASE, tmp_path) == ([], [])


@needs_data
def test_mirror_may_be_a_folder_or_the_environment(mirror, tmp_path, monkeypatch):
    fetch(CHASE, tmp_path / "a", str(mirror[0]))
    assert check_files(CHASE, tmp_path / "a") == ([], [])
    monkeypatch.setenv("LIGHTNING_SEG_MIRROR", f"{mirror[1]}/")
    assert archive_urls(MASKS_TAR) == [f"{mirror[1]}/{MASKS_TAR.filename}"]
    ensure_dataset(CHASE, tmp_path / "b", download=True, progress=False, timeout=10)
    assert check_files(CHASE, tmp_path / "b") == ([], [])


@needs_data
def test_a_mirror_without_the_archive_falls_back_to_its_own_url(loopback, mirror, tmp_path, caplog):
    upstream = dataclasses.replace(CHASE.archives[0], url=f"{mirror[1]}/{CHASE_ZIP}")
    info = dataclasses.replace(CHASE, archives=(upstream,))
    _, empty = loopback.folder("empty-mirror")
    assert archive_urls(upstream, empty) == [f"{empty}/{CHASE_ZIP}", f"{mirror[1]}/{CHASE_ZIP}"]
    with caplog.at_level(logging.WARNING, logger="lightning_seg.data.install"):
        fetch(info, tmp_path, empty)
    assert f"{CHASE_ZIP} is not on the mirror" in caplog.text and check_files(CHASE, tmp_path) == ([], [])


def test_project_archive_needs_a_mirror(loopback, tmp_path):
    with pytest.raises(FileNotFoundError, match="no public host.*mirror"):
        archive_urls(MASKS_TAR)
    assert archive_urls(CHASE.archives[0]) == [CHASE.archives[0].url]
    _, empty = loopback.folder("empty-mirror")
    before = snapshot(tmp_path)
    info = dataclasses.replace(COVID19, archives=(MASKS_TAR,))
    with pytest.raises(DownloadError, match=r"HTTP Error 404.*no public host: the mirror must serve it"):
        fetch(info, tmp_path, empty)
    assert snapshot(tmp_path) == before


@needs_data
def test_pinned_project_archive_is_reproducible(tmp_path):
    """The pinned SHA-256 of the derived-mask tar is what the deterministic builder gives on verified files."""
    built = build_archives(COVID19, DATA_DIR, tmp_path)
    assert sha256_file(tmp_path / MASKS_TAR.filename) == MASKS_TAR.sha256
    assert len(built) == 2 and all(a.sha256 is None for info in INFOS for a in info.archives if a.url)


@needs_data
def test_kept_archives_are_reused_when_pinned(loopback, mirror, installed, tmp_path):
    data_dir = copy_of(installed, tmp_path, "covid19")
    (data_dir / "covid19" / "labels_4class_derived" / "tr_mask_0007.png").unlink()
    fetch(COVID19, data_dir, mirror[1], keep_archives=True)
    assert sha256_file(data_dir / ".downloads" / MASKS_TAR.filename) == MASKS_TAR.sha256
    (data_dir / "covid19" / "labels_4class_derived" / "tr_mask_0008.png").unlink()
    loopback.requests.clear()
    fetch(COVID19, data_dir, mirror[1])
    assert loopback.requests == [] and check_files(COVID19, data_dir) == ([], [])


# --- failures leave data_dir exactly as it was -----------------------------------------------------
@pytest.fixture
def damaged(installed, tmp_path):
    """A Drosophila folder with one corrupt and two missing files, and its snapshot."""
    data_dir = copy_of(installed, tmp_path, "drosophila")
    (data_dir / "drosophila" / "labels" / "labels00000003.png").write_bytes(b"corrupt")
    (data_dir / "drosophila" / "images" / "05.tif").unlink()
    (data_dir / "drosophila" / "labels" / "labels00000011.png").unlink()
    return data_dir, snapshot(data_dir)


@needs_data
def test_altered_member_is_caught_in_staging(loopback, mirror, damaged):
    """The issue's case: the mirror's copy of a needed file differs. Named with archive, member and fix.

    With ``verify=False`` the corrupt label is not looked at (present files are trusted), but the missing
    image fetched from the altered archive is still verified.
    """
    data_dir, before = damaged
    folder, url = loopback.folder("altered")
    altered = altered_zip(mirror[0] / DROSOPHILA_ZIP, folder / "tmp.zip", "/labels00000003.png")
    altered_zip(altered, folder / DROSOPHILA_ZIP, "/raw/05.tif")
    for verify, member, target in [
        (True, "stack1/labels/labels00000003.png", "drosophila/labels/labels00000003.png"),
        (False, "stack1/raw/05.tif", "drosophila/images/05.tif"),
    ]:
        with pytest.raises(ChecksumError) as err:
            fetch(DROSOPHILA, data_dir, url, verify=verify)
        assert snapshot(data_dir) == before
        message = str(err.value)
        assert f"member '{DROSOPHILA_ZIP[:-4]}/{member}' of " in message and f"(for {target}) has SHA-256" in message
        assert f"of {DROSOPHILA_ZIP} from {url}/{DROSOPHILA_ZIP} (for" in message
        assert "Nothing under data_dir was changed. Fix: " in message


@needs_data
def test_damaged_member_midway_changes_nothing(loopback, mirror, damaged):
    """The issue's case: a CRC failure after earlier members were extracted."""
    data_dir, before = damaged
    folder, url = loopback.folder("crc")
    data = bytearray((mirror[0] / DROSOPHILA_ZIP).read_bytes())
    with zipfile.ZipFile(mirror[0] / DROSOPHILA_ZIP) as zf:
        info = zf.getinfo(f"{DROSOPHILA_ZIP[:-4]}/stack1/raw/05.tif")  # after labels/ in sorted order
    data[info.header_offset + 30 + len(info.filename) + 1000] ^= 0xFF
    (folder / DROSOPHILA_ZIP).write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"member '[^']*stack1/raw/05\.tif' cannot be read \(BadZipFile: Bad CRC"):
        fetch(DROSOPHILA, data_dir, url)
    assert snapshot(data_dir) == before


@needs_data
@pytest.mark.parametrize("route", ["cut", "chunked-cut"])
def test_cut_transfer_changes_nothing(loopback, mirror, damaged, route):
    data_dir, before = damaged
    source = f"{loopback.url}/{route}/good"
    with pytest.raises(DownloadError, match=rf"could not download {source}/{DROSOPHILA_ZIP}"):
        fetch(DROSOPHILA, data_dir, source)
    assert snapshot(data_dir) == before


@needs_data
def test_truncated_archive_on_a_folder_mirror_is_named(mirror, damaged, tmp_path):
    data_dir, before = damaged
    (tmp_path / "m").mkdir()
    good = (mirror[0] / DROSOPHILA_ZIP).read_bytes()
    (tmp_path / "m" / DROSOPHILA_ZIP).write_bytes(good[: len(good) // 2])
    with pytest.raises(ArchiveError, match=rf"{DROSOPHILA_ZIP} is neither a zip nor a tar archive, or it is cut short"):
        fetch(DROSOPHILA, data_dir, str(tmp_path / "m"))
    assert snapshot(data_dir) == before


@needs_data
def test_limits_apply_and_can_be_raised(mirror, damaged):
    data_dir, before = damaged
    with pytest.raises(ArchiveError, match=r"lists more than 10 members; .*--max-members"):
        fetch(DROSOPHILA, data_dir, mirror[1], limits=ExtractLimits(max_members=10))
    with pytest.raises(ArchiveError, match=r"expands to more than 1,000,000 bytes"):
        fetch(DROSOPHILA, data_dir, mirror[1], limits=ExtractLimits(max_bytes=1_000_000))
    assert snapshot(data_dir) == before
    fetch(DROSOPHILA, data_dir, mirror[1], limits=ExtractLimits(max_members=40, max_bytes=50_000_000))
    assert check_files(DROSOPHILA, data_dir) == ([], [])


@needs_data
def test_hostile_archive_changes_nothing(loopback, damaged):
    data_dir, before = damaged
    folder, url = loopback.folder("evil")
    stem = DROSOPHILA_ZIP[: -len(".zip")]
    make_zip(folder / DROSOPHILA_ZIP, {f"{stem}/stack1/raw/05.tif": b"x", "../../outside.txt": b"x"})
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./\.\./outside\.txt'"):
        fetch(DROSOPHILA, data_dir, url)
    assert snapshot(data_dir) == before and not (data_dir.parent / "outside.txt").exists()


@needs_data
def test_archive_without_a_needed_file_or_with_it_twice(loopback, mirror, damaged):
    data_dir, before = damaged
    folder, url = loopback.folder("incomplete")
    with zipfile.ZipFile(mirror[0] / DROSOPHILA_ZIP) as old, zipfile.ZipFile(folder / DROSOPHILA_ZIP, "w") as new:
        for info in old.infolist():
            if not info.filename.endswith("/05.tif"):
                new.writestr(info, old.read(info))
    with pytest.raises(FileNotFoundError, match=r"no archive of the dataset holds .*drosophila/images/05\.tif"):
        fetch(DROSOPHILA, data_dir, url)
    assert snapshot(data_dir) == before
    twice = dataclasses.replace(
        DROSOPHILA.archives[0],
        folders={
            "stack1/raw": "drosophila/images",
            "stack1/labels": "drosophila/labels",
            "stack1/raw2": "drosophila/images",
        },  # fmt: skip
    )
    folder, url = loopback.folder("twice")
    with zipfile.ZipFile(mirror[0] / DROSOPHILA_ZIP) as old, zipfile.ZipFile(folder / DROSOPHILA_ZIP, "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info))
            if info.filename.endswith("/raw/05.tif"):
                new.writestr(info.filename.replace("/raw/", "/raw2/"), old.read(info))
    with pytest.raises(ArchiveError, match=r"both provide drosophila/images/05\.tif"):
        fetch(dataclasses.replace(DROSOPHILA, archives=(twice,)), data_dir, url)
    assert snapshot(data_dir) == before


@needs_data
def test_a_failed_rename_puts_everything_back(mirror, damaged, monkeypatch):
    """Even in the last step, moving verified files in: what was moved is taken out, what was set aside returns."""
    data_dir, before = damaged
    real, calls = install._place, []

    def place(staged, dest, changes):
        calls.append(dest)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(staged, dest, changes)

    monkeypatch.setattr(install, "_place", place)
    with pytest.raises(OSError, match="No space left"):
        fetch(DROSOPHILA, data_dir, mirror[1])
    assert len(calls) == 3 and snapshot(data_dir) == before


# --- symlinked dataset folders ---------------------------------------------------------------------
@needs_data
def test_a_dataset_folder_may_be_a_symlink(mirror, installed, tmp_path):
    """The issue's case: ``data_dir/chase`` linked to another disk was refused as "would land outside"."""
    elsewhere = tmp_path / "other-disk" / "chase-copy"
    shutil.copytree(installed / "chase", elsewhere)
    (elsewhere / "labels" / "Image_03R_1stHO.png").unlink()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "chase").symlink_to(elsewhere, target_is_directory=True)
    fetch(CHASE, data_dir, mirror[1])
    assert (data_dir / "chase").is_symlink() and (elsewhere / "labels" / "Image_03R_1stHO.png").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["images", "labels"]  # the staging folder is gone
    dm = ChaseDataModule(data_dir=str(data_dir))
    dm.setup()
    assert len(dm.datasets["train"]) == 16


@needs_data
def test_missing_files_without_download_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "drosophila").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        ensure_dataset(DROSOPHILA, tmp_path)
    message = str(err.value)
    assert f"{tmp_path}/drosophila/images/00.tif" in message and "(and 37 more)" in message
    assert f"fetch drosophila --data-dir {tmp_path}" in message and "figshare" in message
    assert "LIGHTNING_SEG_DATA" in message and "--mirror" in message
