"""Downloads through a loopback server: whole or nothing, one error naming the URL, never a partial file kept."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from lightning_seg.data import ChecksumError, DownloadError
from lightning_seg.data.transfer import fetch

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(scope="module")
def served(loopback):
    """``(base URL, file name)`` of a 300,000-byte file on the loopback server."""
    folder, url = loopback.folder("transfer")
    (folder / "blob.bin").write_bytes(PAYLOAD)
    return url, "blob.bin"


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_whole_file_arrives_under_its_name(served, tmp_path):
    url, name = served
    dest = fetch(f"{url}/{name}", tmp_path / "dl" / "a.bin", sha256=SHA, progress=False, timeout=5)
    assert dest.read_bytes() == PAYLOAD and leftovers(tmp_path / "dl") == ["a.bin"]
    assert dest.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("route", "message"),
    [
        # the server announces 300,000 bytes and sends 150,000
        ("cut", r"received 150,000 bytes, but the server announced 300,000 \(Content-Length\); the transfer was cut"),
        ("chunked-cut", r"IncompleteRead"),
        ("bad-length", r"malformed Content-Length '12abc'"),
    ],
)
def test_cut_or_malformed_transfers_keep_nothing(loopback, served, tmp_path, route, message):
    url, name = served
    source = f"{loopback.url}/{route}/transfer/{name}"
    with pytest.raises(DownloadError, match=rf"could not download {source} to {tmp_path}/a\.bin: .*{message}"):
        fetch(source, tmp_path / "a.bin", progress=False, timeout=5)
    assert leftovers(tmp_path) == []  # neither the final name nor a .part


def test_timeout_is_one_error_naming_the_url(loopback, served, tmp_path):
    url, name = served
    start = time.monotonic()
    with pytest.raises(DownloadError, match=rf"could not download {loopback.url}/slow/transfer/{name} .*timed out"):
        fetch(f"{loopback.url}/slow/transfer/{name}", tmp_path / "a.bin", progress=False, timeout=0.5)
    assert time.monotonic() - start < 2.5 and leftovers(tmp_path) == []


def test_missing_file_and_unreachable_host(served, tmp_path):
    url, _ = served
    with pytest.raises(DownloadError, match=rf"could not download {url}/nope\.bin .*HTTP Error 404") as err:
        fetch(f"{url}/nope.bin", tmp_path / "a.bin", progress=False, timeout=5)
    assert err.value.missing
    with pytest.raises(DownloadError, match=r"could not download http://127\.0\.0\.1:9/a\.bin .*refused") as err:
        fetch("http://127.0.0.1:9/a.bin", tmp_path / "a.bin", progress=False, timeout=5)
    assert not err.value.missing
    with pytest.raises(DownloadError, match=r"could not download htp:/x .*ValueError|URLError"):
        fetch("htp:/x", tmp_path / "a.bin", progress=False, timeout=5)
    with pytest.raises(DownloadError) as err:
        fetch((tmp_path / "absent.bin").as_uri(), tmp_path / "a.bin", progress=False)
    assert err.value.missing and leftovers(tmp_path) == []


def test_pinned_hash_mismatch_keeps_nothing(served, tmp_path):
    url, name = served
    wrong = "0" * 64
    with pytest.raises(
        ChecksumError, match=rf"a\.bin downloaded from {url}/{name} has SHA-256 {SHA}, expected {wrong}"
    ):
        fetch(f"{url}/{name}", tmp_path / "a.bin", sha256=wrong, progress=False, timeout=5)
    assert leftovers(tmp_path) == []


def test_pinned_file_already_there_is_not_fetched_again(loopback, served, tmp_path):
    url, name = served
    dest = tmp_path / "a.bin"
    dest.write_bytes(PAYLOAD)
    loopback.requests.clear()
    fetch(f"{url}/{name}", dest, sha256=SHA, progress=False, timeout=5)
    assert loopback.requests == []
    dest.write_bytes(b"stale")  # unpinned, or not matching: fetched again and replaced whole
    fetch(f"{url}/{name}", dest, progress=False, timeout=5)
    assert dest.read_bytes() == PAYLOAD and len(loopback.requests) == 1


def test_local_file_url(served, loopback, tmp_path):
    _, name = served
    source = loopback.root / "transfer" / name
    assert fetch(source.as_uri(), tmp_path / "a.bin", sha256=SHA, progress=False).read_bytes() == PAYLOAD
