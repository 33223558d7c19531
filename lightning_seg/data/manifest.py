"""Files checked against the committed manifests: what is missing, what is corrupt, once per process before use.

Every file a DataModule reads is listed with its SHA-256 in ``lightning_seg/data/checksums/<dataset>.sha256``
(:attr:`~lightning_seg.data.info.DatasetInfo.manifest_file`). :func:`verify_dataset` checks a dataset's
files before their first use in a process, whatever route they took (``prepare_data``, a bare ``setup()``,
a notebook calling ``load_sample``): hashing all three datasets' 296 files (39 MB) takes about 0.1 s on
one core (``docs/datasets.md``), so the content is checked in full rather than trusted to sizes and mtimes.
``verify=False`` is the only way around it: no check, and a warning in the log (a missing file then
fails when it is read, naming it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from .info import DatasetInfo

log = logging.getLogger(__name__)

#: environment variable naming the folder that holds the datasets (the default ``data_dir``)
DATA_ENV = "LIGHTNING_SEG_DATA"
#: environment variable naming a mirror that serves the archives (the default ``mirror``)
MIRROR_ENV = "LIGHTNING_SEG_MIRROR"
#: where the datasets' layout and sources are described
DOCS = "docs/datasets.md"
_CHUNK = 1 << 20

#: ``(dataset, resolved dataset folder)`` verified in this process (:func:`verify_dataset`), and the folders
#: used unverified, prefixed by ``"unverified"`` (warned about once)
_CHECKED: set[tuple[str, ...]] = set()


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the one the committed manifest gives it."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(info: DatasetInfo, data_dir: str | Path, verify: bool = True) -> tuple[list[str], list[str]]:
    """``(missing, corrupt)``: manifest paths absent under ``data_dir``, and present ones with another SHA-256.

    ``verify=False`` checks presence only (``corrupt`` is then empty).
    """
    data_dir = Path(data_dir)
    missing, corrupt = [], []
    for name, digest in info.manifest().items():
        path = data_dir / name
        if not path.is_file():
            missing.append(name)
        elif verify and sha256_file(path) != digest:
            corrupt.append(name)
    return missing, corrupt


def fix_hint(info: DatasetInfo, data_dir: str | Path) -> str:
    """How to get a dataset into ``data_dir``: the sentence every missing-data error ends with."""
    return (
        f"Fix: run `python -m lightning_seg.data.download fetch {info.name} --data-dir {data_dir}` "
        f"(add --mirror URL, or set ${MIRROR_ENV}, where the upstream hosts cannot be reached), pass "
        f"download=True to the DataModule, or get the files from {info.homepage} and lay them out as in {DOCS}; "
        f"or point data_dir (or ${DATA_ENV}) at the folder that holds {info.name}/."
    )


def describe(names: Sequence[str], data_dir: Path) -> str:
    """The first three of ``names`` under ``data_dir``, and how many more."""
    shown = ", ".join(str(data_dir / n) for n in names[:3])
    return shown + (f" (and {len(names) - 3} more)" if len(names) > 3 else "")


def raise_for(info: DatasetInfo, data_dir: str | Path, missing: Sequence[str], corrupt: Sequence[str]) -> None:
    """Raise :class:`FileNotFoundError` for ``missing`` files or :class:`ChecksumError` for ``corrupt`` ones."""
    data_dir = Path(data_dir)
    folder = data_dir / info.name
    if missing and not folder.is_dir():
        raise FileNotFoundError(
            f"{info.name}: dataset folder {folder.absolute()} not found (data_dir={str(data_dir)!r} must hold "
            f"{info.name}/). {fix_hint(info, data_dir)}"
        )
    if missing:
        raise FileNotFoundError(
            f"{info.name}: {len(missing)} of {len(info.manifest())} files missing under {data_dir}: "
            f"{describe(missing, data_dir)}. {fix_hint(info, data_dir)}"
        )
    if corrupt:
        raise ChecksumError(
            f"{info.name}: {len(corrupt)} file(s) under {data_dir} do not match the SHA-256 in {info.manifest_file}: "
            f"{describe(corrupt, data_dir)}. The file is corrupt or a different version; delete it and fetch it "
            f"again (or pass verify=False to use it unverified). {fix_hint(info, data_dir)}"
        )


def _key(info: DatasetInfo, data_dir: str | Path) -> tuple[str, str]:
    return info.name, str((Path(data_dir) / info.name).resolve())


def mark_checked(info: DatasetInfo, data_dir: str | Path, verify: bool = True) -> None:
    """Record that ``info``'s files under ``data_dir`` were just verified (``verify``), or log that they were not."""
    if verify:
        _CHECKED.add(_key(info, data_dir))
    elif ("unverified",) + _key(info, data_dir) not in _CHECKED:
        _CHECKED.add(("unverified",) + _key(info, data_dir))
        log.warning(
            "%s: verify=False, so the files under %s are used without checking them against %s",
            info.name,
            Path(data_dir) / info.name,
            info.manifest_file,
        )


def verify_dataset(info: DatasetInfo, data_dir: str | Path, verify: bool = True) -> None:
    """Check every file of ``info`` under ``data_dir`` against the manifest, unless this process already did.

    Raises :class:`FileNotFoundError` or :class:`ChecksumError` naming the files and the fix.
    ``verify=False`` checks nothing and logs a warning (once per process and folder).
    """
    if verify and _key(info, data_dir) not in _CHECKED:
        missing, corrupt = check_files(info, data_dir)
        raise_for(info, data_dir, missing, corrupt)
    mark_checked(info, data_dir, verify)


def forget_checks() -> None:
    """Forget which datasets this process has checked (the next use checks them again)."""
    _CHECKED.clear()
