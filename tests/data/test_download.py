"""The command line: fetch, verify, build-mirror, tables; errors as one line naming the URL and the fix."""

from __future__ import annotations

import pytest

from lightning_seg.data.datasets import DATASETS
from lightning_seg.data.download import main
from lightning_seg.data.info import markdown_tables
from lightning_seg.data.manifest import check_files
from tests.conftest import DATA_DIR, REPO

needs_data = pytest.mark.usefixtures("require_data")


@needs_data
def test_verify_reports_per_dataset(capsys):
    assert main(["verify", "all", "--data-dir", str(DATA_DIR)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "drosophila: 0 missing, 0 corrupt of 40 files",
        "covid19: 0 missing, 0 corrupt of 200 files",
        "chase: 0 missing, 0 corrupt of 56 files",
    ]


def test_verify_fails_on_an_empty_folder(tmp_path, capsys):
    assert main(["verify", "chase", "--data-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out.strip() == "chase: 56 missing, 0 corrupt of 56 files"


@needs_data
def test_build_mirror_then_fetch_from_it(tmp_path, capsys):
    assert main(["build-mirror", "chase", "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "m")]) == 0
    assert "sha256=" in capsys.readouterr().out
    args = ["fetch", "chase", "--data-dir", str(tmp_path / "d"), "--mirror", str(tmp_path / "m"), "--no-progress"]
    assert main([*args, "--max-members", "10"]) == 1  # the option reaches the limits
    assert "lists more than 10 members" in capsys.readouterr().err
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"chase: all 56 files present and verified under {tmp_path / 'd'}"
    assert check_files(DATASETS["chase"].info, tmp_path / "d") == ([], [])


def test_errors_are_one_line_naming_the_url(tmp_path, capsys):
    args = ["fetch", "chase", "--data-dir", str(tmp_path), "--mirror", "http://127.0.0.1:9", "--timeout", "5"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m lightning_seg.data.download: error: could not download ")
    assert "http://127.0.0.1:9/SGL-Retinal-Vessel-Segmentation-" in err
    with pytest.raises(OSError, match="could not download"):
        main(["--traceback", *args])


def test_docs_tables_are_generated_from_the_records(capsys):
    """docs/datasets.md shows exactly what the datasets' records say (regenerate with the `tables` command)."""
    assert main(["tables"]) == 0
    printed = capsys.readouterr().out
    assert printed == markdown_tables([module.info for module in DATASETS.values()])
    assert printed in (REPO / "docs" / "datasets.md").read_text()
