"""What a file-backed dataset is: :class:`DatasetInfo`, the one record of its facts, and its :class:`Archive` s.

Each dataset module (``lightning_seg/data/datasets/<name>.py``) defines one :class:`DatasetInfo`: where the
data come from (home page, archives, checksums), how its files are named, what its label values mean and in
which order its classes are, how its images are grouped for splitting, and the size of its images. The
DataModule, the downloader (:mod:`~lightning_seg.data.install`), the mirror builder, the split maker
(``scripts/make_splits.py``) and the tables in ``docs/datasets.md`` (:func:`markdown_tables`) all read it;
nothing else spells a file name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

#: label value of pixels whose class is unknown (the decoded masks' value; mapped to ``ignore_index`` on load)
UNKNOWN = 255
#: the committed per-file manifests, ``<name>.sha256`` in ``sha256sum`` format, paths relative to ``data_dir``
CHECKSUM_DIR = Path(__file__).with_name("checksums")
#: the ``{key}`` placeholder of :attr:`DatasetInfo.image_file` and :attr:`DatasetInfo.label_file`
KEY = "{key}"


@dataclass(frozen=True)
class Archive:
    """One download and the files it provides.

    Files are taken from the archive by folder: a member ``<top>/<source>/<file>`` (``strip`` leading
    components dropped; GitHub archives put everything under ``<repo>-<commit>/``) provides
    ``<target>/<file>`` under ``data_dir`` for each ``source -> target`` of :attr:`folders`, and is
    extracted only when the committed manifest lists that path.
    """

    #: the file's name (also its name on a mirror)
    filename: str
    #: where it is published; ``None``: nowhere public, only a mirror serves it
    url: str | None
    #: SHA-256 of the archive's bytes, or ``None`` when it cannot be pinned (then :attr:`unpinned` says why)
    sha256: str | None
    #: archive folder (after ``strip``) -> folder under ``data_dir`` that its files go to
    folders: Mapping[str, str]
    #: leading path components dropped from member names
    strip: int = 1
    #: why :attr:`sha256` is ``None`` (shown in the docs table); the extracted files are verified regardless
    unpinned: str = ""

    def __post_init__(self) -> None:
        if (self.sha256 is None) == (not self.unpinned):
            raise ValueError(f"{self.filename}: give either a pinned sha256 or the reason it is not pinned")


#: why a GitHub archive's SHA-256 is not pinned
GITHUB_UNPINNED = "GitHub builds it on request and does not promise stable bytes; each file taken from it is verified"


def github_archive(owner: str, repo: str, commit: str, folders: Mapping[str, str]) -> Archive:
    """GitHub's zip of ``owner/repo`` at ``commit`` (everything under ``<repo>-<commit>/``, stripped)."""
    return Archive(
        filename=f"{repo}-{commit}.zip",
        url=f"https://github.com/{owner}/{repo}/archive/{commit}.zip",
        sha256=None,
        folders=folders,
        unpinned=GITHUB_UNPINNED,
    )


@dataclass(frozen=True)
class DatasetInfo:
    """The facts of one dataset, written once (see the module docstring)."""

    #: folder under ``data_dir``, stem of the manifest and split files, name on the command line
    name: str
    #: the dataset's name in prose
    title: str
    #: home page to cite (named in every missing-data error)
    homepage: str
    #: where the copies used here come from and how they relate to the original
    provenance: str
    #: image file of image key ``{key}``, relative to ``data_dir/<name>`` (a :meth:`str.format` pattern)
    image_file: str
    #: label file of image key ``{key}``, relative to ``data_dir/<name>``
    label_file: str
    #: regular expression every image key matches in full
    key_pattern: str
    #: PIL mode of the image files (``"L"`` greyscale or ``"RGB"``)
    image_mode: str
    #: ``(height, width)`` of every image and label file
    native_size: tuple[int, int]
    #: class names in the paper's table order; class index = position
    class_names: tuple[str, ...]
    #: label file value -> class index (or :data:`UNKNOWN`); any other value in a label file is an error
    label_values: Mapping[int, int]
    #: the downloads that together provide every file of the manifest
    archives: tuple[Archive, ...]
    #: validation images per fold of the committed splits
    num_val: int
    #: what one split id is and how ids are grouped (recorded in the split file)
    split_unit: str
    #: the group of an image key (images of a group never straddle two splits); ``None``: each image alone
    group: Callable[[str], str] | None = field(default=None, compare=False)
    #: classes of thin, tubular structures (vessels, membranes): the test also scores them with clDice
    curvilinear_classes: tuple[str, ...] = ()

    @property
    def in_channels(self) -> int:
        return {"L": 1, "RGB": 3}[self.image_mode]

    @property
    def manifest_file(self) -> Path:
        return CHECKSUM_DIR / f"{self.name}.sha256"

    def image_path(self, key: str) -> str:
        """The image file of ``key``, relative to ``data_dir``."""
        return f"{self.name}/{self.image_file.format(key=key)}"

    def label_path(self, key: str) -> str:
        """The label file of ``key``, relative to ``data_dir``."""
        return f"{self.name}/{self.label_file.format(key=key)}"

    def key_of(self, path: str) -> str | None:
        """The image key whose image file is ``path`` (relative to ``data_dir``), else ``None``."""
        prefix, suffix = self.image_path(KEY).split(KEY)
        match = re.fullmatch(re.escape(prefix) + f"({self.key_pattern})" + re.escape(suffix), path)
        return match.group(1) if match else None

    def manifest(self) -> dict[str, str]:
        """``{path relative to data_dir: sha256}`` of every file the dataset needs, from :attr:`manifest_file`."""
        entries = {}
        for number, line in enumerate(self.manifest_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            match = re.fullmatch(r"([0-9a-f]{64}) [ *](\S.*)", line)
            if match is None:
                raise ValueError(f"{self.manifest_file}:{number}: not a `sha256sum` line: {line!r}")
            entries[match.group(2)] = match.group(1)
        return entries

    def keys(self) -> list[str]:
        """Every image key, in order, from the manifest's image files."""
        return sorted(key for path in self.manifest() if (key := self.key_of(path)) is not None)

    def files_of(self, archive: Archive) -> dict[str, str]:
        """``{member path after strip: path relative to data_dir}`` of the manifest files ``archive`` provides."""
        provided = {}
        for path in self.manifest():
            folder, filename = str(PurePosixPath(path).parent), PurePosixPath(path).name
            for source, target in archive.folders.items():
                if target == folder:
                    provided[f"{source}/{filename}"] = path
        return provided


def _cell(values: Sequence[str]) -> str:
    return "<br>".join(values)


def markdown_tables(infos: Sequence[DatasetInfo]) -> str:
    """The two tables of ``docs/datasets.md`` (sources; files and labels), rendered from ``infos``."""
    sources = [
        "| dataset | home page (cite it) | archive | archive SHA-256 | files taken (archive folder → data_dir) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for info in infos:
        for archive in info.archives:
            where = f"`{archive.url}`" if archive.url else f"`{archive.filename}`, mirror only"
            pinned = f"`{archive.sha256}`" if archive.sha256 else f"not pinned: {archive.unpinned}"
            folders = _cell([f"`{s}/` → `{t}/`" for s, t in archive.folders.items()])
            sources.append(f"| {info.title} | {info.homepage} | {where} | {pinned} | {folders} |")
    files = [
        "| dataset | image file | label file | keys | image mode, size (H×W) | classes (index order) "
        "| label file value → class | split groups |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for info in infos:
        by_class: dict[int, list[int]] = {}
        for value, cls in sorted(info.label_values.items()):
            by_class.setdefault(cls, []).append(value)
        mapping = _cell(
            [
                f"{', '.join(map(str, values))} → "
                + ("unknown (`ignore_index`)" if cls == UNKNOWN else f"{cls} {info.class_names[cls]}")
                for cls, values in sorted(by_class.items())
            ]
        )
        classes = ", ".join(f"{i} {name}" for i, name in enumerate(info.class_names))
        keys = info.keys()
        files.append(
            f"| {info.title} | `{info.name}/{info.image_file}` | `{info.name}/{info.label_file}` "
            f"| {len(keys)}: `{keys[0]}` … `{keys[-1]}` | {info.image_mode}, {info.native_size[0]}×{info.native_size[1]} "
            f"| {classes} | {mapping} | {info.split_unit} |"
        )
    return "\n".join(sources) + "\n\n" + "\n".join(files) + "\n"
