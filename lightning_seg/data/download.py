"""Getting the datasets into ``data_dir``: where each one comes from, checksums, safe extraction.

Layout under ``data_dir`` (the same as the project's data share)::

    data_dir/drosophila/{images,labels}/...
    data_dir/covid19/{images,labels_4class_derived}/...
    data_dir/chase/{images,labels}/...

**What is verified.** Every data file a DataModule reads is checked against a committed manifest,
``lightning_seg/data/checksums/<dataset>.sha256`` (``sha256sum -c`` format, paths relative to ``data_dir``).
The manifest lines were copied unchanged from the data share's ``SHA256SUMS``, which was computed on the
files as they were taken from the public repositories named in :data:`SOURCES`. That check works
whatever archive or mirror the files came through, so it is the guarantee; an archive's own SHA-256 is
pinned only where this project has seen the exact bytes.

**Archives.** GitHub builds its ``/archive/<commit>.zip`` downloads on the fly and does not promise stable
bytes, and those archives were never downloaded here, so their ``sha256`` is ``None`` (not pinned); the
files inside are verified against the manifest instead. The derived COVID-19 4-class masks have no public
host: their archive is defined by this project (:func:`build_archives` writes it, uncompressed tar with
fixed metadata, so it is byte-reproducible) and its pinned SHA-256 is what :func:`build_archives` gives
on files that pass the manifest.

**Mirrors.** ``mirror`` (argument, or the environment variable ``LIGHTNING_SEG_MIRROR``) replaces every
archive's URL by ``<mirror>/<filename>``; a mirror may be an ``http(s)://`` or ``file://`` URL or a local
folder. ``python -m lightning_seg.data.download build-mirror --data-dir D --out M`` writes the archives a
mirror must serve from a verified copy of the data.

Command line: ``python -m lightning_seg.data.download fetch {drosophila,covid19,chase,all} --data-dir D
[--mirror URL]``, ``... verify ...``, ``... build-mirror ...``.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CHECKSUM_DIR = Path(__file__).with_name("checksums")
MIRROR_ENV = "LIGHTNING_SEG_MIRROR"
DATA_ENV = "LIGHTNING_SEG_DATA"
DOCS = "docs/datasets.md"
_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the one it must have."""


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder (absolute path, ``..``, escaping link)."""


@dataclass(frozen=True)
class Member:
    """Files named ``pattern`` (fnmatch) in archive folder ``source`` go to ``data_dir/target``."""

    source: str
    pattern: str
    target: str


@dataclass(frozen=True)
class Archive:
    """One download: where it is, what it must hash to (``None``: not pinned), what to extract where.

    ``strip`` leading path components are dropped from member names first (GitHub archives put
    everything under ``<repo>-<commit>/``). ``url=None``: no public host, only a mirror has it.
    """

    filename: str
    url: str | None
    sha256: str | None
    members: tuple[Member, ...]
    strip: int = 1


@dataclass(frozen=True)
class Source:
    """A dataset's home page (cited in errors), its archives, and a note on provenance."""

    homepage: str
    archives: tuple[Archive, ...]
    note: str = ""


def _github(owner: str, repo: str, commit: str, members: tuple[Member, ...]) -> Archive:
    return Archive(f"{repo}-{commit}.zip", f"https://github.com/{owner}/{repo}/archive/{commit}.zip", None, members)


#: Where each dataset comes from. The commits are those the data share's files were copied from.
SOURCES: dict[str, Source] = {
    "drosophila": Source(
        homepage="https://doi.org/10.6084/m9.figshare.856713 (Gerhard et al. 2013, ssTEM VNC stack 1)",
        archives=(
            _github(
                "unidesigner",
                "groundtruth-drosophila-vnc",
                "4a5f051466d24d8dc1e855ab55658bb1b1dcd6bf",
                (
                    Member("stack1/raw", "[0-9][0-9].tif", "drosophila/images"),
                    Member("stack1/labels", "labels000000[0-9][0-9].png", "drosophila/labels"),
                ),
            ),
        ),
        note="stack1 raw sections and merged labels of the dataset's original upload by S. Gerhard",
    ),
    "covid19": Source(
        homepage="https://medicalsegmentation.com/covid19/ (MedSeg; figshare: MedSeg Covid Dataset 1)",
        archives=(
            _github(
                "yuhuan-wu",
                "JCS",
                "fa4bb6ae452c6aa042db8c762822e72df65d9519",
                (Member("data/COVID-19-CT100/tr_im", "tr_im_[0-9][0-9][0-9][0-9].png", "covid19/images"),),
            ),
            Archive(
                "lightning-seg-covid19-labels-4class-derived-v1.tar",
                None,
                # Computed by build_archives on the 100 masks that pass checksums/covid19.sha256 (Python 3.11,
                # USTAR, no compression, fixed metadata); tests/data/test_download.py rebuilds and compares it.
                "42c2f693d7ddff53fc24672d7e8f4e3f66a84ad4cc154f857286f336def09e26",
                (
                    Member(
                        "covid19/labels_4class_derived",
                        "tr_mask_[0-9][0-9][0-9][0-9].png",
                        "covid19/labels_4class_derived",
                    ),
                ),
                strip=0,
            ),
        ),
        note=(
            "images: the MedSeg slices as 8-bit PNGs from yuhuan-wu/JCS; 4-class masks: derived by this project "
            "(no public host; see docs/datasets.md)"
        ),
    ),
    "chase": Source(
        homepage="https://researchdata.kingston.ac.uk/96/ (CHASE_DB1, Kingston University)",
        archives=(
            _github(
                "SHI-Labs",
                "SGL-Retinal-Vessel-Segmentation",
                "e74eaeac27ce2a483da7717645eb0f6e8e708acd",
                (
                    Member("dataset/CHASE/HR", "Image_0[1-9][LR].jpg", "chase/images"),
                    Member("dataset/CHASE/HR", "Image_10[LR].jpg", "chase/images"),
                    Member("dataset/CHASET/HR", "Image_1[1-4][LR].jpg", "chase/images"),
                    Member("dataset/CHASE/VE", "Image_0[1-9][LR]_1stHO.png", "chase/labels"),
                    Member("dataset/CHASE/VE", "Image_10[LR]_1stHO.png", "chase/labels"),
                    Member("dataset/CHASET/VE", "Image_1[1-4][LR]_1stHO.png", "chase/labels"),
                ),
            ),
        ),
        note="the raw CHASE_DB1 images and 1stHO labels as shipped by SHI-Labs/SGL-Retinal-Vessel-Segmentation",
    ),
}


# --- checksums -------------------------------------------------------------------------------------
def read_manifest(dataset: str) -> dict[str, str]:
    """``{path relative to data_dir: sha256}`` of every file ``dataset`` needs."""
    path = CHECKSUM_DIR / f"{dataset}.sha256"
    if dataset not in SOURCES or not path.is_file():
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(SOURCES)}")
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            entries[name.lstrip("*")] = digest.lower()
    return entries


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(dataset: str, data_dir: str | Path, verify: bool = True) -> tuple[list[str], list[str]]:
    """``(missing, corrupt)``: manifest paths absent under ``data_dir``, and present ones with the wrong SHA-256."""
    data_dir = Path(data_dir)
    missing, corrupt = [], []
    for name, digest in read_manifest(dataset).items():
        path = data_dir / name
        if not path.is_file():
            missing.append(name)
        elif verify and sha256_file(path) != digest:
            corrupt.append(name)
    return missing, corrupt


def fix_hint(dataset: str, data_dir: str | Path) -> str:
    """How to get ``dataset`` into ``data_dir``: the sentence every missing-data error ends with."""
    source = SOURCES[dataset]
    return (
        f"Fix: run `python -m lightning_seg.data.download fetch {dataset} --data-dir {data_dir}` "
        f"(add --mirror URL, or set ${MIRROR_ENV}, where the upstream hosts cannot be reached), pass "
        f"download=True to the DataModule, or get the files from {source.homepage} and lay them out as in {DOCS}; "
        f"or point data_dir (or ${DATA_ENV}) at the folder that holds {dataset}/."
    )


def _describe(names: Sequence[str], data_dir: Path) -> str:
    shown = ", ".join(str(data_dir / n) for n in names[:3])
    return shown + (f" (and {len(names) - 3} more)" if len(names) > 3 else "")


def _raise_for(dataset: str, data_dir: Path, missing: Sequence[str], corrupt: Sequence[str]) -> None:
    if missing:
        raise FileNotFoundError(
            f"{dataset}: {len(missing)} of {len(read_manifest(dataset))} files missing under {data_dir}: "
            f"{_describe(missing, data_dir)}. {fix_hint(dataset, data_dir)}"
        )
    if corrupt:
        raise ChecksumError(
            f"{dataset}: {len(corrupt)} file(s) under {data_dir} do not match the SHA-256 in "
            f"{CHECKSUM_DIR / (dataset + '.sha256')}: {_describe(corrupt, data_dir)}. The file is corrupt or a "
            f"different version; delete it and fetch it again. {fix_hint(dataset, data_dir)}"
        )


# --- fetching --------------------------------------------------------------------------------------
def archive_url(archive: Archive, mirror: str | None = None) -> str:
    """The URL to fetch ``archive`` from: ``<mirror>/<filename>`` when a mirror is set, else its own URL."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    if mirror:
        if "://" not in mirror:
            return Path(mirror).resolve().joinpath(archive.filename).as_uri()
        return f"{mirror.rstrip('/')}/{archive.filename}"
    if archive.url is None:
        raise FileNotFoundError(
            f"{archive.filename} has no public host (it is defined by this project); set a mirror that serves it "
            f"(--mirror / ${MIRROR_ENV}), built with `python -m lightning_seg.data.download build-mirror` from a "
            f"copy of the data, or copy its files from the project's data share. See {DOCS}."
        )
    return archive.url


def fetch(url: str, dest: Path, sha256: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part``), with a progress bar, and check ``sha256`` if given.

    A file already at ``dest`` that matches ``sha256`` is kept (an unpinned one is fetched again).
    A mismatch deletes the download and raises :class:`ChecksumError` naming the file and the URL.
    """
    if dest.is_file() and sha256 is not None and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "lightning-seg"})
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _Progress(dest.name, total, progress) as advance:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
    except OSError as err:  # URLError, HTTPError, timeouts and disk errors are all OSErrors
        part.unlink(missing_ok=True)
        raise OSError(f"could not download {url} to {dest}: {err}") from err
    if sha256 is not None and digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest.name} downloaded from {url} has SHA-256 {digest.hexdigest()}, expected {sha256}: the download is "
            f"corrupt or the server holds a different file. It was deleted; fetch again or use another mirror."
        )
    part.replace(dest)
    return dest


class _Progress:
    """A rich progress bar for one download (a no-op when disabled)."""

    def __init__(self, name: str, total: int | None, enabled: bool):
        self.name, self.total, self.enabled = name, total, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        self.bar.__enter__()
        task = self.bar.add_task(self.name, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)


# --- extraction ------------------------------------------------------------------------------------
def _safe_name(name: str, archive: Path) -> PurePosixPath:
    """``name`` as a relative path that stays inside the target, or :class:`UnsafeArchiveError`."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target folder; refusing it")
    return path


def _check_link(member: tarfile.TarInfo, archive: Path) -> None:
    """Links may only point inside the archive's tree (they are never extracted, but reject escapes)."""
    base = posixpath.dirname(member.name) if member.issym() else ""
    target = posixpath.normpath(posixpath.join(base, member.linkname))
    if posixpath.isabs(member.linkname) or target == ".." or target.startswith("../"):
        raise UnsafeArchiveError(
            f"{archive}: link {member.name!r} -> {member.linkname!r} points outside the target folder; refusing it"
        )


def _members(path: Path) -> Iterable[tuple[PurePosixPath, bool, object]]:
    """``(safe name, is regular file, handle)`` of every member, after checking all of them."""
    if zipfile.is_zipfile(path):
        out = []
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = _safe_name(info.filename, path)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:  # a symlink: its data is the target
                    link = tarfile.TarInfo(info.filename)
                    link.type, link.linkname = tarfile.SYMTYPE, zf.read(info).decode("utf-8", "replace")
                    _check_link(link, path)
                    out.append((name, False, info))
                else:
                    out.append((name, not info.is_dir(), info))
        return out
    try:
        with tarfile.open(path) as tf:
            infos = tf.getmembers()
    except tarfile.TarError as err:
        raise ValueError(f"{path} is neither a zip nor a tar archive ({err}); delete it and fetch it again") from err
    out = []
    for info in infos:
        name = _safe_name(info.name, path)
        if info.issym() or info.islnk():
            _check_link(info, path)
        elif not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"{path}: member {info.name!r} is a device or fifo; refusing the archive")
        out.append((name, info.isfile(), info))
    return out


def extract_archive(path: str | Path, data_dir: str | Path, members: Sequence[Member], strip: int = 1) -> list[Path]:
    """Extract the regular files that ``members`` select from ``path`` into ``data_dir``; return them.

    Every member is checked first and the whole archive is refused (:class:`UnsafeArchiveError`) if any
    would escape: an absolute name, a ``..`` component, or a link pointing outside. Links are never
    extracted. Files are written through a temporary name and renamed, so a crash leaves no half file.
    """
    path, data_dir = Path(path), Path(data_dir)
    root = data_dir.resolve()
    chosen = []
    for name, is_file, handle in _members(path):
        parts = name.parts[strip:]
        if not is_file or len(parts) < 1:
            continue
        folder, filename = "/".join(parts[:-1]), parts[-1]
        for m in members:
            if folder == m.source and fnmatch.fnmatchcase(filename, m.pattern):
                dest = (data_dir / m.target / filename).resolve()
                if root not in dest.parents:
                    raise UnsafeArchiveError(f"{path}: {name} would land outside {data_dir}; refusing it")
                chosen.append((handle, dest))
                break
    if not chosen:
        raise ValueError(
            f"{path} holds none of the expected files ({', '.join(m.source + '/' + m.pattern for m in members)}): "
            "is it the right archive? Delete it and fetch it again."
        )
    written = []
    opener = zipfile.ZipFile if zipfile.is_zipfile(path) else tarfile.open
    with opener(path) as archive:
        for handle, dest in chosen:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".part-", delete=False)
            try:
                src = archive.open(handle) if isinstance(archive, zipfile.ZipFile) else archive.extractfile(handle)
                with src, tmp:
                    shutil.copyfileobj(src, tmp, _CHUNK)
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
                Path(tmp.name).unlink(missing_ok=True)
                raise ValueError(f"{path} is damaged ({err}); delete it and fetch it again") from err
            os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600
            os.replace(tmp.name, dest)
            written.append(dest)
    return written


# --- the whole thing -------------------------------------------------------------------------------
def ensure_dataset(
    dataset: str,
    data_dir: str | Path,
    download: bool = False,
    mirror: str | None = None,
    verify: bool = True,
    progress: bool = True,
    keep_archives: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Make sure every file ``dataset`` needs is under ``data_dir`` (and, with ``verify``, matches its SHA-256).

    Idempotent: nothing is fetched when the files are present and verified. Otherwise, with ``download``,
    the archives holding the missing or corrupt files are fetched (from ``mirror`` if set) into
    ``data_dir/.downloads``, checked, extracted and (unless ``keep_archives``) deleted, and the files checked
    again; without ``download`` a :class:`FileNotFoundError` or :class:`ChecksumError` names the files and the fix.
    """
    data_dir = Path(data_dir)
    missing, corrupt = check_files(dataset, data_dir, verify)
    if not missing and not corrupt:
        return data_dir
    if not download:
        _raise_for(dataset, data_dir, missing, corrupt)
    bad = set(missing) | set(corrupt)
    for archive in SOURCES[dataset].archives:
        if not any(posixpath.dirname(n) in {m.target for m in archive.members} for n in bad):
            continue
        local = fetch(
            archive_url(archive, mirror), data_dir / ".downloads" / archive.filename, archive.sha256, progress, timeout
        )
        extract_archive(local, data_dir, archive.members, archive.strip)
        if not keep_archives:
            local.unlink(missing_ok=True)
    missing, corrupt = check_files(dataset, data_dir, verify)
    if missing or corrupt:
        raise ChecksumError(
            f"{dataset}: after fetching, {len(missing)} file(s) are still missing and {len(corrupt)} do not match the "
            f"committed checksums under {data_dir}: {_describe(missing + corrupt, data_dir)}. The archive holds "
            f"different files than the project's copy; see {DOCS}."
        )
    return data_dir


def build_archives(dataset: str, data_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the archives of ``dataset`` that a mirror must serve, from verified files under ``data_dir``.

    Zips are built like GitHub's (everything under ``<stem>/``), tars without a prefix; both stored
    uncompressed, sorted, with fixed timestamps and owners, so the same files always give the same bytes.
    A pinned archive that comes out with another SHA-256 is an error.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    _raise_for(dataset, data_dir, *check_files(dataset, data_dir, verify=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(read_manifest(dataset))
    written = []
    for archive in SOURCES[dataset].archives:
        prefix = PurePosixPath(Path(archive.filename).stem) if archive.strip else PurePosixPath()
        entries = []
        for name in names:
            folder, filename = posixpath.split(name)
            for m in archive.members:
                if folder == m.target and fnmatch.fnmatchcase(filename, m.pattern):
                    entries.append((str(prefix / m.source / filename), data_dir / name))
                    break
        dest = out_dir / archive.filename
        if archive.filename.endswith(".zip"):
            with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
                for arcname, src in sorted(entries):
                    info = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = 0o100644 << 16
                    zf.writestr(info, src.read_bytes())
        else:
            with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tf:
                for arcname, src in sorted(entries):
                    data = src.read_bytes()
                    info = tarfile.TarInfo(arcname)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tf.addfile(info, io.BytesIO(data))
        if archive.sha256 is not None and sha256_file(dest) != archive.sha256:
            raise ChecksumError(f"built {dest} has SHA-256 {sha256_file(dest)}, but {archive.sha256} is pinned")
        written.append(dest)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_seg.data.download", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("fetch", "download, verify and extract what is missing"),
        ("verify", "check the files against the committed checksums"),
        ("build-mirror", "write the archives a mirror serves"),
    ]:
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("datasets", nargs="+", choices=[*SOURCES, "all"])
        cmd.add_argument("--data-dir", default=os.environ.get(DATA_ENV, "data"))
        if name == "fetch":
            cmd.add_argument("--mirror", default=None, help=f"base URL or folder serving the archives (${MIRROR_ENV})")
            cmd.add_argument("--keep-archives", action="store_true")
        if name == "build-mirror":
            cmd.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    datasets = list(SOURCES) if "all" in args.datasets else list(dict.fromkeys(args.datasets))
    for dataset in datasets:
        if args.command == "fetch":
            ensure_dataset(dataset, args.data_dir, download=True, mirror=args.mirror, keep_archives=args.keep_archives)
            print(f"{dataset}: all files present and verified under {args.data_dir}")
        elif args.command == "verify":
            missing, corrupt = check_files(dataset, args.data_dir)
            print(f"{dataset}: {len(missing)} missing, {len(corrupt)} corrupt")
            if missing or corrupt:
                return 1
        else:
            for path in build_archives(dataset, args.data_dir, args.out):
                print(f"{path}  sha256={sha256_file(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
