"""The README's first command: three losses trained with equal settings, their test IoU per class side by side."""

from __future__ import annotations

import json
import re

import pytest

from lightning_seg import demo
from lightning_seg.grid.spec import Grid
from lightning_seg.run import Records
from tests.conftest import CONFIGS

#: a demo of a few seconds per run: 32 px, 4 steps, a validation every 2
TINY = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "data.init_args.num_images=20",
    "data.init_args.image_size=32",
    "model.init_args.model_kwargs={base_channels: 4, depth: 2}",
]
GRID = CONFIGS / "grids" / "demo.yaml"


def test_format_table_puts_losses_side_by_side_and_marks_the_best():
    table = {"ce": {"bg": 90.0, "vessel": 40.04, "mIoU": 65.02}, "caml": {"bg": 89.5, "vessel": 45.0, "mIoU": 67.25}}
    assert demo.format_table(table).splitlines() == [
        "| test IoU (%) | ce | caml |",
        "|---|---:|---:|",
        "| bg | **90.0** | 89.5 |",
        "| vessel | 40.0 | **45.0** |",
        "| mIoU | 65.0 | **67.2** |",
    ]
    # a class a run never saw (no IoU) is a dash, not a zero
    assert "| bg | – | **1.0** |" in demo.format_table({"a": {"mIoU": 1.0}, "b": {"bg": 1.0, "mIoU": 2.0}})


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    args = ["--grid", str(GRID), "--out", str(out), "--parallel", "2", *(f"--set={o}" for o in TINY)]
    return out, args


def test_the_table_is_the_runs_test_records_and_a_rerun_trains_nothing(demo_run, capsys):
    out, args = demo_run
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    runs = Grid.load(GRID).runs(TINY)
    assert [run.keys["loss"] for run in runs] == ["ce", "ml", "caml"]
    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert rows["test IoU (%)"].split("|")[2:5] == [" ce ", " ml ", " caml "]
    for k, run in enumerate(runs):
        metrics = json.loads((out / run.relpath / Records.TEST_METRICS).read_text())["metrics"]
        for name, value in [
            *((n.removeprefix("test/iou_"), v) for n, v in metrics.items() if "iou_" in n),
            ("mIoU", metrics["test/miou"]),
        ]:
            cell = rows[name].split("|")[2 + k].strip().strip("*")
            assert cell == f"{100 * value:.1f}", (run.keys["loss"], name)
    assert (out / "demo.png").stat().st_size > 10_000
    results = {run.relpath: (out / run.relpath / Records.RESULT).read_text() for run in runs}
    # the same command again: the runs are done (same settings), the table is printed again
    assert demo.main(args) == 0
    assert re.search(r"\| mIoU \|", capsys.readouterr().out)
    assert {run.relpath: (out / run.relpath / Records.RESULT).read_text() for run in runs} == results


def test_bad_input_is_one_line(tmp_path, capsys):
    assert demo.main(["--grid", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-seg-demo: error: --grid ") and "no such file" in err and "\n" not in err
    assert demo.main(["--grid", str(GRID), "--out", str(tmp_path), "--set", "nokey"]) == 2
    assert "'nokey' is not key=value" in capsys.readouterr().err
    assert demo.main(["--grid", str(GRID), "--out", str(tmp_path), "--parallel", "0"]) == 2
    assert capsys.readouterr().err == "lightning-seg-demo: error: --parallel must be at least 1, got 0\n"
