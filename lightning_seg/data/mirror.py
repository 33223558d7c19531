"""Building the archives a mirror serves, from a verified copy of the data, byte for byte reproducibly.

A mirror is a folder (or its copy on a web server) holding archives under their :attr:`Archive.filename`;
``--mirror`` / ``$LIGHTNING_SEG_MIRROR`` points the downloader at it. :func:`build_archives` writes them
with the upstream layouts (zips under ``<stem>/``, each file in the first archive folder that maps to its
folder under ``data_dir``), stored uncompressed, sorted, with fixed timestamps and owners, so that the
same files always give the same bytes. That is how the project's own archive (the derived COVID-19 masks,
which have no public host) gets its pinned SHA-256.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .info import DatasetInfo
from .manifest import ChecksumError, check_files, raise_for, sha256_file


def build_archives(info: DatasetInfo, data_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the archives of ``info`` into ``out_dir`` from the verified files under ``data_dir``; return them.

    Raises:
        FileNotFoundError, ChecksumError: a file under ``data_dir`` is missing or corrupt.
        ChecksumError: a pinned archive came out with another SHA-256.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    raise_for(info, data_dir, *check_files(info, data_dir, verify=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for archive in info.archives:
        prefix = PurePosixPath(Path(archive.filename).stem) if archive.strip else PurePosixPath()
        members: dict[str, str] = {}  # path under data_dir -> member name: the first folder mapping wins
        for member, path in info.files_of(archive).items():
            members.setdefault(path, str(prefix / member))
        entries = sorted((name, data_dir / path) for path, name in members.items())
        dest = out_dir / archive.filename
        if archive.filename.endswith(".zip"):
            with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
                for name, src in entries:
                    member = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                    member.external_attr = 0o100644 << 16
                    zf.writestr(member, src.read_bytes())
        else:
            with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tf:
                for name, src in entries:
                    data = src.read_bytes()
                    member = tarfile.TarInfo(name)
                    member.size, member.mode, member.mtime = len(data), 0o644, 0
                    tf.addfile(member, io.BytesIO(data))
        if archive.sha256 is not None and sha256_file(dest) != archive.sha256:
            raise ChecksumError(f"built {dest} has SHA-256 {sha256_file(dest)}, but {archive.sha256} is pinned")
        written.append(dest)
    return written
