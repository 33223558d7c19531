"""scripts/pilot_results.py --previous: each cell's mean test mIoU in an earlier run of a grid and now."""

import csv
import importlib.util

import pytest

from tests.conftest import REPO

FIELDS = ["dataset", "loss", "seed", "test_miou"]


def load_script():
    spec = importlib.util.spec_from_file_location("pilot_results", REPO / "scripts" / "pilot_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_runs(path, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        writer.writerows(rows)


def test_rerun_table_matches_runs_by_dataset_loss_and_seed(tmp_path):
    before, after, out = tmp_path / "before.csv", tmp_path / "after.csv", tmp_path / "rerun.csv"
    write_runs(before, [("chase", "ce", 0, 60.0), ("chase", "ce", 1, 70.0), ("chase", "caml", 0, 50.0)])
    write_runs(after, [("chase", "caml", 0, 49.5), ("chase", "ce", 1, 73.0), ("chase", "ce", 0, 59.0)])  # any order
    load_script().rerun_table(before, after, out)
    with out.open() as handle:
        rows = {(r["dataset"], r["loss"]): r for r in csv.DictReader(handle)}
    # ce: 65.00 then, 66.00 now; its runs moved -1 and +3, the larger +3
    assert rows["chase", "ce"] == {
        "dataset": "chase",
        "loss": "ce",
        "n": "2",
        "previous_miou": "65.00",
        "miou": "66.00",
        "change": "+1.00",
        "largest_run_change": "+3.00",
    }
    assert (rows["chase", "caml"]["change"], rows["chase", "caml"]["largest_run_change"]) == ("-0.50", "-0.50")


def test_rerun_table_refuses_other_runs(tmp_path):
    before, after = tmp_path / "before.csv", tmp_path / "after.csv"
    write_runs(before, [("chase", "ce", 0, 60.0)])
    write_runs(after, [("chase", "ce", 1, 60.0)])
    with pytest.raises(SystemExit, match=r"--previous .*before\.csv: its runs are not those of .*after\.csv"):
        load_script().rerun_table(before, after, tmp_path / "rerun.csv")
