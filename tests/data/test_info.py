"""One home per dataset: each fact in its dataset module, and nowhere else."""

from __future__ import annotations

import re

import pytest

from lightning_seg.data.datasets import DATASETS
from lightning_seg.data.info import Archive, DatasetInfo
from lightning_seg.data.splits import SPLIT_DIR
from tests.conftest import REPO

INFOS = {name: module.info for name, module in DATASETS.items()}


@pytest.mark.parametrize("name", INFOS)
def test_the_manifest_is_exactly_the_image_and_label_files_of_the_keys(name):
    info = INFOS[name]
    keys = info.keys()
    assert len(keys) == {"drosophila": 20, "covid19": 100, "chase": 28}[name]
    assert all(re.fullmatch(info.key_pattern, key) for key in keys)
    assert sorted(info.manifest()) == sorted([info.image_path(k) for k in keys] + [info.label_path(k) for k in keys])
    assert all(info.key_of(info.image_path(k)) == k for k in keys)
    assert info.key_of(info.label_path(keys[0])) is None


@pytest.mark.parametrize("name", INFOS)
def test_the_archives_provide_every_file(name):
    info = INFOS[name]
    provided = [path for archive in info.archives for path in set(info.files_of(archive).values())]
    assert sorted(provided) == sorted(info.manifest())  # each file from exactly one archive


@pytest.mark.parametrize("name", INFOS)
def test_the_split_file_records_the_grouping(name):
    """The committed split file names the same ids, unit and groups as the record (make_splits reads it)."""
    import json

    info, payload = INFOS[name], json.loads((SPLIT_DIR / f"{name}.json").read_text())
    assert payload["ids"] == info.keys() and payload["unit"] == info.split_unit and payload["num_val"] == info.num_val
    if info.group is None:
        assert "groups" not in payload
    else:
        assert payload["groups"] == {k: info.group(k) for k in info.keys()}


def test_an_archive_is_pinned_or_says_why_not():
    with pytest.raises(ValueError, match="either a pinned sha256 or the reason"):
        Archive("a.zip", "https://x/a.zip", None, {"a": "b"})
    with pytest.raises(ValueError, match="either a pinned sha256 or the reason"):
        Archive("a.zip", "https://x/a.zip", "0" * 64, {"a": "b"}, unpinned="because")
    assert all(a.sha256 or a.unpinned for info in INFOS.values() for a in info.archives)


def test_a_malformed_manifest_line_is_named(tmp_path, monkeypatch):
    info = INFOS["chase"]
    bad = tmp_path / "chase.sha256"
    bad.write_text(info.manifest_file.read_text() + "not a checksum line\n")
    monkeypatch.setattr(DatasetInfo, "manifest_file", property(lambda self: bad))
    with pytest.raises(ValueError, match=r"chase\.sha256:57: not a `sha256sum` line: 'not a checksum line'"):
        info.manifest()


#: a fragment of each dataset's file names that only its own module may spell
FILE_NAME_FRAGMENTS = {"drosophila": "labels000000", "covid19": "tr_im_", "chase": "_1stHO"}


@pytest.mark.parametrize("name", INFOS)
def test_file_names_are_written_only_in_the_dataset_module(name):
    """The issue's case: the COVID-19 image name was written three ways (datasets, download, make_splits)."""
    fragment = FILE_NAME_FRAGMENTS[name]
    sources = [*(REPO / "lightning_seg").rglob("*.py"), *(REPO / "scripts").glob("*.py")]
    spelling = sorted(str(p.relative_to(REPO)) for p in sources if fragment in p.read_text())
    assert spelling == [f"lightning_seg/data/datasets/{name}.py"]
