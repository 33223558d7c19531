"""Crafted archives: escapes, links, devices, bombs, lies about sizes, damage; each refused with one clear error."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from lightning_seg.data import ArchiveError, ExtractLimits, UnsafeArchiveError
from lightning_seg.data.archives import ArchiveReader


def make_zip(path: Path, names: dict[str, bytes], links: dict[str, str] | None = None, **kwargs) -> Path:
    with zipfile.ZipFile(path, "w", **kwargs) as zf:
        for name, data in names.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, names: dict[str, bytes], links: dict[str, str] | None = None, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
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
        ("zip", {"C:/evil.txt": b"x"}, None),
        ("zip", {"repo/stack1/raw/00.tif": b"x"}, {"repo/stack1/raw/01.tif": "../../../../etc/passwd"}),
        ("tar", {"repo/stack1/raw/../../../evil.txt": b"x"}, None),
        ("tar", {"repo\\..\\..\\evil.txt": b"x"}, None),
        ("tar", {"repo/stack1/raw/00.tif": b"x"}, {"repo/stack1/raw/01.tif": "/etc/passwd"}),
        ("tar", {"repo/stack1/raw/00.tif": b"x"}, {"repo/escape": "../.."}),
    ],
)
def test_escaping_members_refuse_the_whole_archive(tmp_path, kind, names, links):
    archive = (make_zip if kind == "zip" else make_tar)(tmp_path / f"evil.{kind}", names, links)
    with pytest.raises(UnsafeArchiveError, match=rf"{archive}: .*refusing"):
        ArchiveReader(archive)


def test_devices_and_fifos_are_refused(tmp_path):
    with tarfile.open(tmp_path / "dev.tar", "w") as tf:
        info = tarfile.TarInfo("repo/null")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match=r"'repo/null' is a device or fifo"):
        ArchiveReader(tmp_path / "dev.tar")
    with zipfile.ZipFile(tmp_path / "fifo.zip", "w") as zf:
        info = zipfile.ZipInfo("repo/fifo")
        info.external_attr = 0o010644 << 16
        zf.writestr(info, b"")
    with pytest.raises(UnsafeArchiveError, match=r"'repo/fifo' is a device or fifo"):
        ArchiveReader(tmp_path / "fifo.zip")


def test_a_zip_link_whose_target_is_not_a_path_is_refused_unread(tmp_path):
    archive = make_zip(tmp_path / "link.zip", {}, {"repo/link": "x" * 5000})
    with pytest.raises(UnsafeArchiveError, match=r"link 'repo/link' holds 5,000 bytes, not a path"):
        ArchiveReader(archive)


def test_links_inside_the_tree_are_allowed_but_never_extracted(tmp_path):
    archive = make_tar(tmp_path / "ok.tar", {"repo/raw/00.tif": b"data"}, {"repo/raw/01.tif": "00.tif"})
    with ArchiveReader(archive) as reader:
        assert [str(e.name) for e in reader.files] == ["repo/raw/00.tif"]
        digest = reader.extract(reader.files[0], tmp_path / "00.tif")
    assert (tmp_path / "00.tif").read_bytes() == b"data" and len(digest) == 64


def test_member_count_is_bounded(tmp_path):
    archive = make_zip(tmp_path / "many.zip", {f"repo/{i}": b"" for i in range(11)})
    with pytest.raises(ArchiveError, match=r"lists more than 10 members; .*--max-members"):
        ArchiveReader(archive, ExtractLimits(max_members=10))
    assert len(ArchiveReader(archive, ExtractLimits(max_members=11)).files) == 11
    many = make_tar(tmp_path / "many.tar", {f"repo/{i}": b"" for i in range(ExtractLimits().max_members + 1)})
    with pytest.raises(ArchiveError, match=r"lists more than 10,000 members"):  # the default
        ArchiveReader(many)


def test_expansion_is_bounded(tmp_path):
    """The issue's case: a 65 KB zip of 64 MiB of zeros."""
    bomb = make_zip(tmp_path / "bomb.zip", {"repo/zeros.bin": bytes(64 << 20)}, compression=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ArchiveError, match=r"expands to more than 33,554,432 bytes .*--max-bytes"):
        ArchiveReader(bomb, ExtractLimits(max_bytes=32 << 20))
    # the default limit, 1 GiB, on a member whose header declares 4 GiB: refused before decompressing anything
    data = bytearray(make_zip(tmp_path / "small.zip", {"repo/a.bin": b"abc"}).read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 0xFFFFFFF0)  # uncompressed size in the central directory
    (tmp_path / "liar.zip").write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"expands to more than 1,073,741,824 bytes"):
        ArchiveReader(tmp_path / "liar.zip")


def test_a_member_never_writes_more_or_less_than_declared(tmp_path):
    data = bytearray(make_zip(tmp_path / "ok.zip", {"repo/a.bin": b"0123456789"}).read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 4)  # declares 4 of its 10 bytes
    (tmp_path / "short.zip").write_bytes(bytes(data))
    with ArchiveReader(tmp_path / "short.zip") as reader, pytest.raises(ArchiveError, match=r"'repo/a\.bin'"):
        reader.extract(reader.files[0], tmp_path / "a.bin")
    assert not (tmp_path / "a.bin").exists()


def test_damaged_member_names_archive_and_member(tmp_path):
    archive = make_zip(tmp_path / "crc.zip", {"repo/a.bin": b"A" * 1000, "repo/b.bin": b"B" * 1000})
    data = bytearray(archive.read_bytes())
    data[data.index(b"B" * 1000) + 500] ^= 0xFF  # stored member: the zip opens, the member fails its CRC
    archive.write_bytes(bytes(data))
    with ArchiveReader(archive) as reader:
        reader.extract(reader.files[0], tmp_path / "a.bin")
        with pytest.raises(ArchiveError, match=rf"{archive}: member 'repo/b\.bin' cannot be read \(BadZipFile"):
            reader.extract(reader.files[1], tmp_path / "b.bin")
    assert not (tmp_path / "b.bin").exists()


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_tar_gz_is_one_error_naming_the_file(tmp_path, cut):
    """The issue's case: a truncated .tar.gz gave a bare EOFError naming nothing."""
    payload = {f"repo/{i}.bin": bytes(range(256)) * 400 for i in range(4)}
    full = make_tar(tmp_path / "full.tar.gz", payload, mode="w:gz").read_bytes()
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(full[: int(len(full) * cut)])
    with pytest.raises(ArchiveError, match=rf"{archive}.* cut short"):
        with ArchiveReader(archive) as reader:
            for i, entry in enumerate(reader.files):
                reader.extract(entry, tmp_path / f"{i}.bin")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(ArchiveError, match=r"x\.zip is neither a zip nor a tar archive, or it is cut short"):
        ArchiveReader(tmp_path / "x.zip")
    (tmp_path / "y.tar.gz").write_bytes(gzip.compress(b"not a tar")[:10])
    with pytest.raises(ArchiveError, match=r"y\.tar\.gz is damaged or cut short \(EOFError"):
        ArchiveReader(tmp_path / "y.tar.gz")


def test_extract_never_overwrites(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"repo/a.bin": b"new"})
    (tmp_path / "a.bin").write_bytes(b"old")
    with ArchiveReader(archive) as reader, pytest.raises(FileExistsError):
        reader.extract(reader.files[0], tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == b"old"
