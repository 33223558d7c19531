"""Atomic writes: the whole new file, or the old one untouched."""

import json
import os

import pytest

from lightning_seg.atomic import write_json_atomic, write_text_atomic


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "deeper" / "record.json"
    assert write_json_atomic(path, {"a": 1}) == path
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_text_atomic(tmp_path / "results.md", "old\n")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new\n")
    assert path.read_text() == "old\n"
