"""Reading zip and tar archives defensively: every member checked before anything is written, bounded size.

:class:`ArchiveReader` opens a zip or a tar (plain, gzip, bzip2 or xz; recognised by content, not name)
and checks every member first. The whole archive is refused (:class:`UnsafeArchiveError`) if any member
has an absolute name, a drive letter or a ``..`` component, is a link pointing outside the archive's
tree, or is a device or fifo. It is refused (:class:`ArchiveError`) if it lists more than
:attr:`ExtractLimits.max_members` members or its files add up to more than
:attr:`ExtractLimits.max_bytes`; a member can never write more than its declared size. Links are never
extracted. Every decompression or format error (``zipfile.BadZipFile``, ``tarfile.TarError``,
``EOFError``, ``zlib.error``, ``lzma.LZMAError``, ``OSError``) is one :class:`ArchiveError` naming the
archive and the member.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import posixpath
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_CHUNK = 1 << 20
_MAX_LINK = 4096  # bytes: longer than any path a link may hold (PATH_MAX)
#: what reading a damaged or cut-short archive can raise
READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, struct.error, OSError)


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder (absolute path, ``..``, escaping link) or is a device."""


class ArchiveError(ValueError):
    """An archive is damaged, cut short, not an archive, or larger than the limits allow."""


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what one archive may hold. The defaults are far above the datasets' archives (at most 710
    members and a few hundred MB; see ``docs/datasets.md``) and far below what fills a disk; raise them for others."""

    #: most members an archive may list
    max_members: int = 10_000
    #: most bytes the archive's files may add up to once decompressed (1 GiB)
    max_bytes: int = 1 << 30


@dataclass(frozen=True)
class Entry:
    """One regular-file member: its checked name, declared size and the handle to read it."""

    name: PurePosixPath
    size: int
    handle: zipfile.ZipInfo | tarfile.TarInfo


def safe_name(name: str, archive: str) -> PurePosixPath:
    """``name`` as a relative path that stays inside the target, or :class:`UnsafeArchiveError`."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target folder; refusing it")
    return path


def _check_link(name: str, target: str, archive: str, symbolic: bool = True) -> None:
    """A link must point inside the archive's tree (links are never extracted, but an escape means a hostile archive)."""
    base = posixpath.dirname(name) if symbolic else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchiveError(
            f"{archive}: link {name!r} -> {target!r} points outside the target folder; refusing it"
        )


class ArchiveReader:
    """A checked, open archive: :attr:`files` lists its regular files, :meth:`extract` writes one of them.

    ``name`` is how errors name the archive (default: its path), e.g. its file name and URL.

    Raises:
        ArchiveError: not a zip or tar, damaged, or over ``limits``.
        UnsafeArchiveError: a member is unsafe (see the module docstring).

    Example:
        >>> with ArchiveReader(Path("a.zip")) as reader:  # doctest: +SKIP
        ...     digest = reader.extract(reader.files[0], Path("staging/x.png"))
    """

    def __init__(self, path: str | Path, limits: ExtractLimits | None = None, name: str | None = None) -> None:
        self.path = Path(path)
        #: how messages name the archive (default: its path)
        self.name = name or str(self.path)
        self.limits = limits or ExtractLimits()
        self.files: list[Entry] = []
        self._archive: zipfile.ZipFile | tarfile.TarFile | None = None
        try:
            if zipfile.is_zipfile(self.path):
                self._archive = zipfile.ZipFile(self.path)
                self._list_zip(self._archive)
            else:
                try:
                    self._archive = tarfile.open(self.path)
                except tarfile.TarError as err:
                    raise ArchiveError(
                        f"{self.name} is neither a zip nor a tar archive, or it is cut short ({err}). Fix: fetch it "
                        "again (or from another mirror)."
                    ) from err
                self._list_tar(self._archive)
        except READ_ERRORS as err:
            self.close()
            raise ArchiveError(
                f"{self.name} is damaged or cut short ({type(err).__name__}: {err}). Fix: fetch it again (or from another mirror)."
            ) from err
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
            self._archive = None

    def _count(self, seen: int, size: int) -> None:
        """Apply the limits after ``seen`` members whose files add up to ``size`` bytes."""
        if seen > self.limits.max_members:
            raise ArchiveError(
                f"{self.name} lists more than {self.limits.max_members:,} members; refusing it. If it is the right "
                f"archive, raise the limit (--max-members, or ExtractLimits(max_members=...))."
            )
        if size > self.limits.max_bytes:
            raise ArchiveError(
                f"{self.name} expands to more than {self.limits.max_bytes:,} bytes ({size:,} counted so far); refusing "
                f"it. If it is the right archive, raise the limit (--max-bytes, or ExtractLimits(max_bytes=...))."
            )

    def _list_zip(self, archive: zipfile.ZipFile) -> None:
        total = 0
        for count, info in enumerate(archive.infolist(), 1):
            name = safe_name(info.filename, self.name)
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:  # a symlink: its data is the target, a path (read only if path-sized)
                if info.file_size > _MAX_LINK:
                    raise UnsafeArchiveError(
                        f"{self.name}: link {info.filename!r} holds {info.file_size:,} bytes, not a path; refusing it"
                    )
                _check_link(info.filename, archive.read(info).decode("utf-8", "replace"), self.name)
            elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(
                    f"{self.name}: member {info.filename!r} is a device or fifo; refusing the archive"
                )
            elif not info.is_dir():
                total += info.file_size
                self.files.append(Entry(name, info.file_size, info))
            self._count(count, total)

    def _list_tar(self, archive: tarfile.TarFile) -> None:
        total = 0
        for count, info in enumerate(archive, 1):  # lazily, so that the limits stop a huge listing early
            name = safe_name(info.name, self.name)
            if info.issym() or info.islnk():
                _check_link(info.name, info.linkname, self.name, symbolic=info.issym())
            elif info.isfile():
                total += info.size
                self.files.append(Entry(name, info.size, info))
            elif not info.isdir():
                raise UnsafeArchiveError(f"{self.name}: member {info.name!r} is a device or fifo; refusing the archive")
            self._count(count, total)

    def extract(self, entry: Entry, dest: Path) -> str:
        """Write ``entry`` to the new file ``dest`` (never an existing one) and return its SHA-256.

        Raises:
            ArchiveError: the member cannot be read, or its size differs from the declared one (``dest`` is removed).
            FileExistsError: ``dest`` exists.
        """
        digest, written = hashlib.sha256(), 0
        with open(dest, "xb") as out:
            try:
                with self._reading(entry):
                    source = self._open(entry)
                with source:
                    while True:
                        with self._reading(entry):  # only the archive's side: a full disk stays an OSError
                            chunk = source.read(_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > entry.size:
                            raise ArchiveError(
                                f"{self.name}: member {str(entry.name)!r} holds more than its declared {entry.size:,} "
                                "bytes; the archive is malformed. Fix: fetch it again (or from another mirror)."
                            )
                        out.write(chunk)
                        digest.update(chunk)
                if written != entry.size:
                    raise ArchiveError(
                        f"{self.name}: member {str(entry.name)!r} ended after {written:,} of its declared "
                        f"{entry.size:,} bytes; the archive is damaged or cut short. Fix: fetch it again (or from another mirror)."
                    )
            except BaseException:
                out.close()
                dest.unlink(missing_ok=True)
                raise
        return digest.hexdigest()

    def _open(self, entry: Entry):
        if isinstance(self._archive, zipfile.ZipFile):
            return self._archive.open(entry.handle)
        return self._archive.extractfile(entry.handle)

    @contextlib.contextmanager
    def _reading(self, entry: Entry) -> Iterator[None]:
        """Turn any error of reading ``entry`` from the archive into one :class:`ArchiveError` naming it."""
        try:
            yield
        except READ_ERRORS as err:
            raise ArchiveError(
                f"{self.name}: member {str(entry.name)!r} cannot be read ({type(err).__name__}: {err}); the archive "
                "is damaged or cut short. Fix: fetch it again (or from another mirror)."
            ) from err
