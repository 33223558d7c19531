"""Fetching through a mirror: a local HTTP server on 127.0.0.1 serves archives built from the real data.

The archives are those :func:`~lightning_seg.data.download.build_archives` writes (the layouts of the
upstream archives, and the project's own tar of the derived COVID-19 masks). Error paths: a corrupt
pinned archive, a truncated and an altered unpinned one, and archives whose members try to escape.
"""

from __future__ import annotations

import http.server
import io
import shutil
import tarfile
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from lightning_seg.data import ChaseDataModule
from lightning_seg.data.download import (
    SOURCES,
    ChecksumError,
    Member,
    UnsafeArchiveError,
    archive_url,
    build_archives,
    check_files,
    ensure_dataset,
    extract_archive,
    main,
    read_manifest,
    sha256_file,
)
from tests.conftest import DATA_DIR

needs_data = pytest.mark.usefixtures("require_data")
DATASETS = list(SOURCES)
DROSOPHILA_ZIP = SOURCES["drosophila"].archives[0].filename
MASKS_TAR = SOURCES["covid19"].archives[1]


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        type(self).requests.append(self.path)


@pytest.fixture(scope="module")
def server(tmp_path_factory, require_data):
    """``(base URL, served folder, request log)``; the server runs in a daemon thread and is shut down after."""
    root = tmp_path_factory.mktemp("www")
    for dataset in DATASETS:
        build_archives(dataset, DATA_DIR, root / "good")
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_mirror_env(monkeypatch):
    monkeypatch.delenv("LIGHTNING_SEG_MIRROR", raising=False)


def fetch_all(data_dir: Path, mirror: str, **kwargs) -> None:
    for dataset in DATASETS:
        ensure_dataset(dataset, data_dir, download=True, mirror=mirror, progress=False, timeout=10, **kwargs)


# --- the happy path --------------------------------------------------------------------------------
@needs_data
def test_fetch_through_http_mirror_is_verified_and_idempotent(server, tmp_path):
    url, _, requests = server
    requests.clear()
    fetch_all(tmp_path, f"{url}/good")
    assert sorted(requests) == sorted(f"/good/{a.filename}" for s in SOURCES.values() for a in s.archives)
    for dataset in DATASETS:
        assert check_files(dataset, tmp_path) == ([], [])
    assert not any((tmp_path / ".downloads").iterdir())  # archives removed after extraction
    fetch_all(tmp_path, f"{url}/good")
    assert len(requests) == 4  # nothing fetched again
    # only the files the manifests name were extracted
    extracted = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert extracted == sorted(n for d in DATASETS for n in read_manifest(d))
    assert (tmp_path / "chase" / "labels" / "Image_01L_1stHO.png").stat().st_mode & 0o777 == 0o644
    # and a DataModule reads them like the originals
    dm = ChaseDataModule(data_dir=str(tmp_path))
    dm.prepare_data()
    reference = ChaseDataModule(data_dir=str(DATA_DIR))
    for a, b in zip(dm.load_sample("Image_05R"), reference.load_sample("Image_05R"), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_data
def test_only_archives_with_missing_files_are_fetched_and_corrupt_files_repaired(server, tmp_path):
    url, _, requests = server
    fetch_all(tmp_path, f"{url}/good")
    (tmp_path / "covid19" / "labels_4class_derived" / "tr_mask_0042.png").unlink()
    victim = tmp_path / "chase" / "images" / "Image_07L.jpg"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ChecksumError, match=r"chase/images/Image_07L\.jpg.*delete it and fetch it again"):
        ensure_dataset("chase", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"tr_mask_0042\.png"):
        ensure_dataset("covid19", tmp_path)
    requests.clear()
    fetch_all(tmp_path, f"{url}/good")
    assert sorted(requests) == sorted([f"/good/{MASKS_TAR.filename}", f"/good/{SOURCES['chase'].archives[0].filename}"])
    assert all(check_files(d, tmp_path) == ([], []) for d in DATASETS)


@needs_data
def test_datamodule_prepare_data_downloads_when_asked(server, tmp_path):
    url, _, _ = server
    with pytest.raises(FileNotFoundError, match="download=True"):
        ChaseDataModule(data_dir=str(tmp_path)).prepare_data()
    ChaseDataModule(data_dir=str(tmp_path), download=True, mirror=f"{url}/good").prepare_data()
    assert check_files("chase", tmp_path) == ([], [])


@needs_data
def test_mirror_may_be_a_folder_or_the_environment(server, tmp_path, monkeypatch):
    url, root, _ = server
    ensure_dataset("chase", tmp_path / "a", download=True, mirror=str(root / "good"), progress=False)
    assert check_files("chase", tmp_path / "a") == ([], [])
    monkeypatch.setenv("LIGHTNING_SEG_MIRROR", f"{url}/good/")
    assert archive_url(MASKS_TAR) == f"{url}/good/{MASKS_TAR.filename}"
    ensure_dataset("chase", tmp_path / "b", download=True, progress=False)
    assert check_files("chase", tmp_path / "b") == ([], [])


@needs_data
def test_pinned_project_archive_is_reproducible(tmp_path):
    """The pinned SHA-256 of the derived-mask tar is what the deterministic builder gives on verified files."""
    built = build_archives("covid19", DATA_DIR, tmp_path)
    assert sha256_file(tmp_path / MASKS_TAR.filename) == MASKS_TAR.sha256
    assert len(built) == 2 and all(a.sha256 is None for s in SOURCES.values() for a in s.archives if a.url)


# --- errors --------------------------------------------------------------------------------------
def test_missing_files_without_download_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        ensure_dataset("drosophila", tmp_path)
    message = str(err.value)
    assert f"{tmp_path}/drosophila/images/00.tif" in message and "(and 37 more)" in message
    assert f"fetch drosophila --data-dir {tmp_path}" in message and "figshare" in message
    assert "LIGHTNING_SEG_DATA" in message and "--mirror" in message


def test_project_archive_needs_a_mirror():
    with pytest.raises(FileNotFoundError, match="no public host.*mirror"):
        archive_url(MASKS_TAR)
    assert archive_url(SOURCES["chase"].archives[0]).startswith("https://github.com/SHI-Labs/")
    assert archive_url(MASKS_TAR, "http://example.invalid/m/") == f"http://example.invalid/m/{MASKS_TAR.filename}"


@needs_data
def test_corrupt_pinned_archive_gives_checksum_error(server, tmp_path):
    url, root, _ = server
    bad = root / "bad-sha"
    bad.mkdir(exist_ok=True)
    shutil.copy(root / "good" / SOURCES["covid19"].archives[0].filename, bad)
    data = bytearray((root / "good" / MASKS_TAR.filename).read_bytes())
    data[2000] ^= 0xFF
    (bad / MASKS_TAR.filename).write_bytes(bytes(data))
    with pytest.raises(
        ChecksumError, match=rf"{MASKS_TAR.filename} downloaded from {url}/bad-sha/.*expected {MASKS_TAR.sha256}"
    ):
        ensure_dataset("covid19", tmp_path, download=True, mirror=f"{url}/bad-sha", progress=False)
    assert not (tmp_path / ".downloads" / MASKS_TAR.filename).exists()
    assert not list((tmp_path / ".downloads").glob("*.part"))
    assert not (tmp_path / "covid19" / "labels_4class_derived").exists()


@needs_data
def test_truncated_or_altered_unpinned_archive_is_caught(server, tmp_path):
    url, root, _ = server
    good = (root / "good" / DROSOPHILA_ZIP).read_bytes()
    (root / "truncated").mkdir(exist_ok=True)
    (root / "truncated" / DROSOPHILA_ZIP).write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=rf"{DROSOPHILA_ZIP} is neither a zip nor a tar"):
        ensure_dataset("drosophila", tmp_path / "t", download=True, mirror=f"{url}/truncated", progress=False)
    # a byte flipped inside a stored member: the zip opens, but the member fails its CRC
    damaged = bytearray(good)
    damaged[len(good) // 3] ^= 0xFF
    (root / "damaged").mkdir(exist_ok=True)
    (root / "damaged" / DROSOPHILA_ZIP).write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=rf"{DROSOPHILA_ZIP} is damaged"):
        ensure_dataset("drosophila", tmp_path / "d", download=True, mirror=f"{url}/damaged", progress=False)
    assert not list((tmp_path / "d").rglob(".part-*"))
    # a well-formed archive whose file differs from the project's copy
    (root / "altered").mkdir(exist_ok=True)
    with (
        zipfile.ZipFile(root / "good" / DROSOPHILA_ZIP) as src,
        zipfile.ZipFile(root / "altered" / DROSOPHILA_ZIP, "w") as dst,
    ):
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:-1] + b"\0" if info.filename.endswith("/labels00000003.png") else data)
    with pytest.raises(ChecksumError, match=r"drosophila/labels/labels00000003\.png"):
        ensure_dataset("drosophila", tmp_path / "a", download=True, mirror=f"{url}/altered", progress=False)


def _zip(path: Path, names: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in names.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def _tar(path: Path, names: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in names.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


@pytest.mark.parametrize(
    ("kind", "names", "links"),
    [
        ("zip", {"repo/stack1/raw/00.tif": b"x", "repo/../../evil.txt": b"x"}, None),
        ("zip", {"/tmp/evil.txt": b"x"}, None),
        ("zip", {"repo/stack1/raw/00.tif": b"x"}, {"repo/stack1/raw/01.tif": "../../../../etc/passwd"}),
        ("tar", {"repo/stack1/raw/../../../evil.txt": b"x"}, None),
        ("tar", {"repo/stack1/raw/00.tif": b"x"}, {"repo/stack1/raw/01.tif": "/etc/passwd"}),
        ("tar", {"repo/stack1/raw/00.tif": b"x"}, {"repo/escape": "../.."}),
    ],
)
def test_path_traversal_archives_are_refused(tmp_path, kind, names, links):
    archive = (_zip if kind == "zip" else _tar)(tmp_path / f"evil.{kind}", names, links)
    target = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract_archive(archive, target, [Member("stack1/raw", "*.tif", "drosophila/images")])
    assert not target.exists() and not (tmp_path / "evil.txt").exists()


def test_links_inside_the_archive_are_allowed_but_not_extracted(tmp_path):
    archive = _tar(tmp_path / "ok.tar", {"repo/stack1/raw/00.tif": b"data"}, {"repo/stack1/raw/01.tif": "00.tif"})
    written = extract_archive(archive, tmp_path / "data", [Member("stack1/raw", "*.tif", "drosophila/images")])
    assert written == [(tmp_path / "data" / "drosophila" / "images" / "00.tif").resolve()]
    assert written[0].read_bytes() == b"data"


@needs_data
def test_path_traversal_archive_is_refused_end_to_end(server, tmp_path):
    url, root, _ = server
    (root / "evil").mkdir(exist_ok=True)
    stem = DROSOPHILA_ZIP[: -len(".zip")]
    _zip(root / "evil" / DROSOPHILA_ZIP, {f"{stem}/stack1/raw/00.tif": b"x", "../../outside.txt": b"x"})
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./\.\./outside\.txt'"):
        ensure_dataset("drosophila", tmp_path / "d", download=True, mirror=f"{url}/evil", progress=False)
    assert not (tmp_path / "d" / "drosophila").exists() and not (tmp_path / "outside.txt").exists()


def test_unreachable_mirror_names_the_url(tmp_path):
    with pytest.raises(OSError, match=r"could not download http://127\.0\.0\.1:9/"):
        ensure_dataset("chase", tmp_path, download=True, mirror="http://127.0.0.1:9", progress=False, timeout=5)


@needs_data
def test_command_line_verify():
    assert main(["verify", "all", "--data-dir", str(DATA_DIR)]) == 0
