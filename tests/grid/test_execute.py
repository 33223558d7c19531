"""Running grid runs: results written atomically, done runs never redone, killed runs and grids resumed."""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_seg.cli import TEST_METRICS
from lightning_seg.evaluation import PER_IMAGE, read_per_image
from lightning_seg.grid import Grid, RunFailed, execute_run, run_local, run_status
from lightning_seg.grid.cli import main as grid_main
from lightning_seg.grid.execute import LOG, RESULT, GridReport, RunLocked, local_slots, run_lock
from tests.conftest import CONFIGS, REPO

GRID = CONFIGS / "grids" / "synthetic.yaml"
#: a run of a few seconds: 32 px, 2 training batches per epoch
TINY = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_model_summary=false",
    "data.init_args.num_images=20",
    "data.init_args.image_size=32",
    "model.init_args.model_kwargs={base_channels: 4, depth: 2}",
]
CPU = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def tiny_runs(*overrides: str) -> list:
    return Grid.load(GRID).runs([*TINY, *overrides])


def small_grid(tmp_path: Path, seeds: str = "[0, 1, 2]") -> Path:
    """The synthetic grid cut to CE on full data for ``seeds``."""
    text = (
        GRID.read_text()
        .replace("config_dir: ..", f"config_dir: {CONFIGS}")
        .replace("seed: [0, 1, 2]", f"seed: {seeds}")
    )
    path = tmp_path / "small.yaml"
    path.write_text(
        text.replace("fraction: [1.0, 0.25], loss: [ce, dice, additive_0.5, ml, caml]", "fraction: [1.0], loss: [ce]")
    )
    assert len(Grid.load(path).runs()) == len(yaml.safe_load(seeds))
    return path


def attempts(run_dir: Path) -> list[str]:
    """The command lines of every attempt, from the headers in run.log."""
    return [line for line in (run_dir / LOG).read_text().splitlines() if line.startswith("# ")]


def forbid_subprocesses(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a subprocess was started")

    monkeypatch.setattr(subprocess, "call", fail)


def test_a_run_writes_its_result_and_is_never_started_again(tmp_path, monkeypatch):
    run = tiny_runs()[0]
    result = execute_run(run, tmp_path, CPU)
    run_dir = tmp_path / run.relpath
    assert run_status(run_dir) == "done"
    stored = json.loads((run_dir / RESULT).read_text())
    assert stored == result
    assert (
        result["keys"]
        == run.keys
        == {
            "dataset": "synthetic",
            "model": "unet",
            "loss": "ce",
            "fraction": 1.0,
            "fold": 0,
            "seed": 0,
        }
    )
    tested = json.loads((run_dir / TEST_METRICS).read_text())
    assert result["metrics"] == tested["metrics"]
    assert set(result["metrics"]) >= {"test/miou", "test/iou_background", "test/iou_curve", "test/dice"}
    assert result["command"][-1] == "--test_after_fit=true" and result["cuda_visible_devices"] == ""
    assert Path(result["ckpt_path"]).is_file() and result["epochs"] == 1
    assert not list(run_dir.glob(".*.tmp"))

    forbid_subprocesses(monkeypatch)
    assert execute_run(run, tmp_path, CPU) == stored
    report = run_local([run], tmp_path, [CPU])
    assert report.done_before == [run] and not report.completed and report.ok


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    (run,) = [r for r in tiny_runs() if r.seed == 1 and r.loss == "ml" and r.fraction == 1.0]
    execute_run(run, tmp_path, CPU)
    run_dir = tmp_path / run.relpath
    # as if killed after the first epoch's checkpoint: no test yet, and the grid asks for two epochs
    (run_dir / RESULT).unlink()
    (run_dir / TEST_METRICS).unlink()
    assert run_status(run_dir) == "partial"
    (longer,) = [r for r in tiny_runs("trainer.max_epochs=2") if r.relpath == run.relpath]
    result = execute_run(longer, tmp_path, CPU)
    first, second = attempts(run_dir)
    assert "--ckpt_path" not in first
    assert second.endswith(f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert "Restoring states from the checkpoint path" in (run_dir / LOG).read_text()
    assert result["epochs"] == 2
    # with the run's own loss, not the module's default (the checkpoint's hyperparameters do not override it)
    resumed_config = yaml.safe_load((run_dir / "logs" / "version_1" / "config.yaml").read_text())
    assert resumed_config["model"]["init_args"]["loss"] == "ml"
    # the resumed attempt trained epoch 1 only
    with open(run_dir / "logs" / "version_1" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["epoch"] for row in rows if row["val/miou"]} == {"1"}


def test_a_run_that_finished_testing_is_only_finalised(tmp_path, monkeypatch):
    run = tiny_runs()[0]
    run_dir = tmp_path / run.relpath
    run_dir.mkdir(parents=True)
    metrics = {"test/miou": 0.5, "test/iou_blob": None}
    (run_dir / TEST_METRICS).write_text(json.dumps({"keys": {}, "metrics": metrics, "ckpt_path": "x", "epochs": 3}))
    forbid_subprocesses(monkeypatch)
    result = execute_run(run, tmp_path)
    assert result["metrics"] == metrics and result["command"] is None and result["epochs"] == 3


def test_a_failing_run_is_reported_with_its_log_and_the_others_go_on(tmp_path):
    good, bad = tiny_runs()[:1] + tiny_runs("trainer.max_epochs=not-a-number")[1:2]
    report = run_local([good, bad], tmp_path, [CPU, CPU])
    assert report.completed == [good] and list(report.failed) == [bad] and not report.ok
    message = report.failed[bad]
    assert "exit code" in message and str(tmp_path / bad.relpath / LOG) in message
    assert "not-a-number" in message  # the log's tail: jsonargparse's complaint
    assert run_status(tmp_path / bad.relpath) == "new"
    assert "FAILED synthetic/unet/ce/fold0_frac1_seed1" in report.summary()
    with pytest.raises(RunFailed, match="exit code 2"):
        execute_run(bad, tmp_path, CPU)


def test_a_run_locked_by_another_process_is_left_alone(tmp_path, monkeypatch):
    run = tiny_runs()[0]
    forbid_subprocesses(monkeypatch)
    with run_lock(tmp_path / run.relpath):
        with pytest.raises(RunLocked):
            execute_run(run, tmp_path)
        report = run_local([run], tmp_path, [CPU])
    assert report.locked == [run] and not report.ok
    with run_lock(tmp_path / run.relpath):  # released again
        pass


def test_local_slots_pack_runs_per_gpu_and_share_the_cpu():
    slots = local_slots(["0", "1"], runs_per_gpu=3, cpu_parallel=1)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0", "0", "0", "1", "1", "1"]
    cpu = local_slots([], runs_per_gpu=1, cpu_parallel=2)
    assert len(cpu) == 2 and all(s["CUDA_VISIBLE_DEVICES"] == "" for s in cpu)
    assert cpu[0]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    with pytest.raises(ValueError, match="at least 1"):
        local_slots(["0"], runs_per_gpu=0, cpu_parallel=1)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="runs end with their grid via prctl (Linux)")
def test_a_grid_killed_half_way_resumes_where_it_stopped(tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["--out", str(out), "--gpus", "none", "--parallel", "1"]
    args += [f"--set={o}" for o in [*TINY, "trainer.max_epochs=2"]]
    grid = small_grid(tmp_path)
    runs = Grid.load(grid).runs()
    assert len(runs) == 3
    first = out / runs[0].relpath
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    grid_process = subprocess.Popen(
        [sys.executable, "-m", "lightning_seg.grid", "run", str(grid), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (first / RESULT).is_file():
            assert grid_process.poll() is None, "the grid ended before it was killed"
            assert time.monotonic() < deadline, "the first run did not finish"
            time.sleep(0.2)
        grid_process.send_signal(signal.SIGKILL)
    finally:
        grid_process.kill()
        grid_process.wait()
    finished = (first / RESULT).read_text()
    # the run that was training when the grid died ends too, instead of racing the resumed grid
    deadline = time.monotonic() + 30
    while processes_mentioning(str(out)):
        assert time.monotonic() < deadline, "a run outlived its killed grid"
        time.sleep(0.2)
    states = [run_status(out / r.relpath) for r in runs]
    assert states[0] == "done" and "done" not in states[1:]

    assert grid_main(["run", str(grid), *args, "--aggregate"]) == 0
    assert (first / RESULT).read_text() == finished  # not redone
    assert "| unet | 1 | ce | 3 |" in (out / "results.md").read_text()  # aggregated once all were done
    assert len(attempts(first)) == 1
    assert all(run_status(out / r.relpath) == "done" for r in runs)
    capsys.readouterr()
    assert grid_main(["list", str(grid), "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"3 runs in {out.resolve()}: 3 done"
    assert grid_main(["list", str(grid), "--out", str(out), "--commands"]) == 0
    commands = capsys.readouterr().out.splitlines()[:3]
    assert [shlex.split(c) for c in commands] == [r.command(out.resolve() / r.relpath) for r in runs]


def test_grid_report_summary():
    report = GridReport()
    assert report.ok and report.summary().startswith("0 already done, 0 completed, 0 failed")


@pytest.mark.parametrize("dataset", ["covid19", "chase", "drosophila"])
def test_the_reduced_preset_runs_on_the_real_data(dataset, require_data, tmp_path):
    """One run per dataset of configs/grids/reduced.yaml, end to end on the real files, cut to a few steps."""
    cut = [
        "trainer.max_steps=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_model_summary=false",
        "data.init_args.num_workers=0",
        "model.init_args.model_kwargs={base_channels: 4, depth: 2}",
    ]
    runs = Grid.load(CONFIGS / "grids" / "reduced.yaml").runs(cut)
    run = next(r for r in runs if r.data == dataset and r.loss == "caml" and r.fraction < 1)
    result = execute_run(run, tmp_path, {**CPU, "LIGHTNING_SEG_DATA": str(require_data)})
    classes = {"covid19": 4, "chase": 2, "drosophila": 5}[dataset]
    assert len([k for k in result["metrics"] if k.startswith("test/iou_")]) == classes
    assert result["keys"]["fraction"] == run.fraction and 0 <= result["metrics"]["test/miou"] <= 1
    # every test scores each test image and class (one batch of 4 here), clDice only for the curvilinear class
    rows = read_per_image(tmp_path / run.relpath / PER_IMAGE)
    assert len(rows) == 4 * classes and len({r["id"] for r in rows}) == 4
    curvilinear = {"covid19": set(), "chase": {"retinal vessel"}, "drosophila": {"membrane"}}[dataset]
    for row in rows:
        scores = ["dice", "iou", "hd95", "nsd", *(["cldice"] if row["class"] in curvilinear else [])]
        assert all(math.isnan(row[s]) for s in scores) == (row["case"] == "both_empty"), row
        assert row["class"] in curvilinear or math.isnan(row["cldice"])
    if dataset == "drosophila":  # tiles are grouped by the section they were cut from
        assert all(row["sample_group"] == row["id"].split("/")[0] for row in rows)
    assert 0 <= result["metrics"]["test/ece"] <= 1
