"""Getting a dataset into ``data_dir`` without ever damaging what is there: a staged, verified repair.

:func:`ensure_dataset` checks the files against the committed manifest. When some are missing or corrupt
and ``download`` is set, it

1. creates a staging folder inside the dataset folder, ``data_dir/<name>/.staging-*`` (inside the dataset
   folder so that it lies on the same file system even when that folder is a symlink to another disk);
2. fetches into it only the archives that provide those files (:func:`~lightning_seg.data.transfer.fetch`;
   from the mirror first if one is set, from the archive's own URL when the mirror does not have it; a
   pinned archive kept in ``data_dir/.downloads`` by ``keep_archives`` is reused), and extracts only those
   files next to them, through :class:`~lightning_seg.data.archives.ArchiveReader`'s checks and limits;
3. verifies every staged file against the manifest;
4. only then moves each staged file into place by an atomic rename: files that were missing, and corrupt
   files (set aside first and put back if a later rename fails). A verified file is never overwritten.

Any failure (transfer, archive, limits, a staged file with the wrong SHA-256, a file no archive provides,
a rename) leaves ``data_dir`` exactly as it was: files moved in are taken out again, set-aside files are
put back, the staging folder and the folders this call created are removed, and the error names the
archive, the member and the fix. With ``keep_archives`` the fetched archives end in ``data_dir/.downloads``.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .archives import ArchiveError, ArchiveReader, ExtractLimits
from .info import Archive, DatasetInfo
from .manifest import DOCS, MIRROR_ENV, ChecksumError, check_files, describe, mark_checked, raise_for, sha256_file
from .transfer import DownloadError, fetch

log = logging.getLogger(__name__)

#: folder under ``data_dir`` that downloads go to
DOWNLOADS = ".downloads"
#: name prefix of the staging folders inside a dataset folder
STAGING_PREFIX = ".staging-"


def archive_urls(archive: Archive, mirror: str | None = None) -> list[str]:
    """Where to fetch ``archive`` from, in order: ``<mirror>/<filename>`` when a mirror is set, then its own URL.

    ``mirror`` (else ``$LIGHTNING_SEG_MIRROR``) may be an ``http(s)://`` or ``file://`` URL or a local folder.
    """
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    urls = []
    if mirror:
        urls.append(
            f"{mirror.rstrip('/')}/{archive.filename}"
            if "://" in mirror
            else Path(mirror).resolve().joinpath(archive.filename).as_uri()
        )
    if archive.url:
        urls.append(archive.url)
    if not urls:
        raise FileNotFoundError(
            f"{archive.filename} has no public host (it is defined by this project); set a mirror that serves it "
            f"(--mirror / ${MIRROR_ENV}), built with `python -m lightning_seg.data.download build-mirror` from a "
            f"verified copy of the data. See {DOCS}."
        )
    return urls


def _download(archive: Archive, dest: Path, mirror: str | None, progress: bool, timeout: float) -> str:
    """Fetch ``archive`` to ``dest`` from the first of :func:`archive_urls` that has it; return that URL."""
    *mirrored, last = archive_urls(archive, mirror)
    for url in mirrored:  # the mirror, when set and the archive has its own URL too
        try:
            fetch(url, dest, archive.sha256, progress, timeout)
            return url
        except DownloadError as err:
            if not err.missing:
                raise
            log.warning("%s is not on the mirror (%s); trying %s", archive.filename, url, last)
    try:
        fetch(last, dest, archive.sha256, progress, timeout)
    except DownloadError as err:
        if err.missing and not archive.url:
            raise DownloadError(f"{err} It has no public host: the mirror must serve it (build-mirror).") from err
        raise
    return last


class _Changes:
    """What one repair did to ``data_dir``, so that a failure can undo it."""

    def __init__(self) -> None:
        self.folders: list[Path] = []  # created, in creation order
        self.placed: list[tuple[Path, Path | None]] = []  # (file moved in, the corrupt file it replaced, set aside)

    def makedirs(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and not folder.is_symlink():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self.folders.append(path)

    def undo(self) -> None:
        """Take every placed file out again and put back what it replaced."""
        for placed, replaced in reversed(self.placed):
            placed.unlink(missing_ok=True)
            if replaced is not None:
                os.replace(replaced, placed)
        self.placed.clear()

    def commit(self) -> None:
        """Delete the corrupt files that were set aside."""
        for _, replaced in self.placed:
            if replaced is not None:
                replaced.unlink(missing_ok=True)

    def prune(self) -> None:
        """Remove the folders this repair created that are (again) empty."""
        for folder in reversed(self.folders):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _place(staged: Path, dest: Path, changes: _Changes) -> None:
    """Move the verified ``staged`` file to ``dest`` by one atomic rename, setting a corrupt ``dest`` aside first."""
    changes.makedirs(dest.parent)
    replaced = None
    if dest.exists() or dest.is_symlink():
        replaced = dest.with_name(f".{dest.name}.replaced-{os.getpid()}")
        os.replace(dest, replaced)
    changes.placed.append((dest, replaced))
    try:
        os.replace(staged, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:  # a sub-folder on another file system: copy beside it, then rename
            raise
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(staged, "rb") as src:
                shutil.copyfileobj(src, out)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _stage(
    info: DatasetInfo,
    archive: Archive,
    path: Path,
    source: str,
    wanted: dict[str, str],
    staging: Path,
    limits: ExtractLimits,
) -> dict[str, Path]:
    """Extract the members ``wanted`` (``{member after strip: path under data_dir}``) into ``staging``, verified.

    ``source`` names the archive in errors (its file name and where it came from).
    """
    manifest = info.manifest()
    chosen: dict[str, tuple[str, object]] = {}
    with ArchiveReader(path, limits, name=source) as reader:
        for entry in reader.files:
            member = "/".join(entry.name.parts[archive.strip :])
            target = wanted.get(member)
            if target is None:
                continue
            if target in chosen:
                raise ArchiveError(
                    f"{source}: members {chosen[target][0]!r} and {str(entry.name)!r} both provide {target}; the archive "
                    f"does not have the expected layout. Fix: use the archive named in {DOCS} (or another mirror)."
                )
            chosen[target] = (str(entry.name), entry)
        staged = {}
        for target, (member, entry) in chosen.items():
            dest = staging / target
            dest.parent.mkdir(parents=True, exist_ok=True)
            digest = reader.extract(entry, dest)
            if digest != manifest[target]:
                raise ChecksumError(
                    f"{info.name}: member {member!r} of {source} (for {target}) has SHA-256 {digest}, but "
                    f"{info.manifest_file} requires {manifest[target]}: the archive holds a different version of the "
                    f"file. Nothing under data_dir was changed. Fix: fetch from another mirror (--mirror), or rebuild "
                    f"the mirror from a verified copy (build-mirror); see {DOCS}."
                )
            staged[target] = dest
    return staged


def ensure_dataset(
    info: DatasetInfo,
    data_dir: str | Path,
    download: bool = False,
    mirror: str | None = None,
    verify: bool = True,
    progress: bool = True,
    keep_archives: bool = False,
    timeout: float = 60.0,
    limits: ExtractLimits | None = None,
) -> Path:
    """Make sure every file of ``info`` is under ``data_dir`` and (with ``verify``) matches its SHA-256.

    Idempotent: nothing is fetched when the files are present and verified. Otherwise, with ``download``,
    a staged repair (see the module docstring); without, an error naming the files and the fix.
    ``verify=False`` accepts present files unchecked (logged); fetched files are verified regardless.

    Raises:
        FileNotFoundError: files are missing and ``download`` is off, or no archive has them.
        ChecksumError: files are corrupt and ``download`` is off, or an archive holds a different version.
        DownloadError: a transfer failed (the URL is named).
        ArchiveError, UnsafeArchiveError: an archive is damaged, over the limits, or hostile.

    Example:
        >>> ensure_dataset(CHASE, "data", download=True, mirror="http://host/mirror")  # doctest: +SKIP
    """
    data_dir = Path(data_dir)
    missing, corrupt = check_files(info, data_dir, verify)
    if missing or corrupt:
        if not download:
            raise_for(info, data_dir, missing, corrupt)
        _repair(info, data_dir, sorted(missing + corrupt), mirror, progress, keep_archives, timeout, limits)
    mark_checked(info, data_dir, verify)
    return data_dir


def _repair(
    info: DatasetInfo,
    data_dir: Path,
    needed: Sequence[str],
    mirror: str | None,
    progress: bool,
    keep_archives: bool,
    timeout: float,
    limits: ExtractLimits | None,
) -> None:
    limits = limits or ExtractLimits()
    changes = _Changes()
    changes.makedirs(data_dir / info.name)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=data_dir / info.name))
    fetched: list[Path] = []
    try:
        staged: dict[str, Path] = {}
        for archive in info.archives:
            wanted = {m: p for m, p in info.files_of(archive).items() if p in needed and p not in staged}
            if not wanted:
                continue
            kept = data_dir / DOWNLOADS / archive.filename
            if archive.sha256 is not None and kept.is_file() and sha256_file(kept) == archive.sha256:
                local, source = kept, str(kept)  # kept by an earlier fetch (--keep-archives), still the pinned bytes
            else:
                local = staging / DOWNLOADS / archive.filename
                source = f"{archive.filename} from {_download(archive, local, mirror, progress, timeout)}"
                fetched.append(local)
            staged.update(_stage(info, archive, local, source, wanted, staging, limits))
        lacking = [p for p in needed if p not in staged]
        if lacking:
            raise FileNotFoundError(
                f"{info.name}: no archive of the dataset holds {describe(lacking, data_dir)}; nothing under "
                f"{data_dir} was changed. Fix: check that the mirror serves the archives named in {DOCS}."
            )
        for target in needed:
            _place(staged[target], data_dir / target, changes)
        if keep_archives:
            for local in fetched:
                _place(local, data_dir / DOWNLOADS / local.name, changes)
    except BaseException:
        changes.undo()
        raise
    else:
        changes.commit()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        changes.prune()
    log.info("%s: %d file(s) fetched, verified and moved into %s", info.name, len(needed), data_dir)
