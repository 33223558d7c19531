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

from lightning_seg.evaluation import read_per_image
from lightning_seg.grid import Grid, RunFailed, execute_run, run_local, run_status
from lightning_seg.grid.cli import main as grid_main
from lightning_seg.grid.execute import LOG, GridReport, RunLocked, local_slots, run_lock
from lightning_seg.run import Records, RunFolder
from tests.conftest import CONFIGS, REPO

RESULT, TEST_METRICS = Records.RESULT, Records.TEST_METRICS

GRID = CONFIGS / "grids" / "synthetic.yaml"
#: a run of a few seconds: 32 px, 2 training batches per epoch, a validation after each
TINY = [
    "trainer.max_epochs=1",
    "trainer.val_check_interval=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_model_summary=false",
    "data.init_args.num_images=20",
    "data.init_args.image_size=32",
    "model.init_args.model_kwargs={base_channels: 4, depth: 2}",
]
CPU = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
TINY_MODEL = "unet_base_channels=4_depth=2"
DIVERGING = ["model.init_args.optimizer=torch.optim.SGD", "model.init_args.optimizer.init_args.lr=1e30"]


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
        text.replace("fraction: [1.0, 0.25], loss: [ce, dice, additive, ml, caml]", "fraction: [1.0], loss: [ce]")
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
    assert run_status(run_dir) == run_status(run_dir, run.identity.fingerprint) == "done"
    stored = json.loads((run_dir / RESULT).read_text())
    assert stored == result
    assert (
        result["keys"]
        == run.keys
        == {
            "dataset": "synthetic",
            "model": TINY_MODEL,
            "loss": "ce",
            "fraction": 1.0,
            "fold": 0,
            "seed": 0,
        }
    )
    assert result["fingerprint"] == run.identity.fingerprint and result["cell"] == run.identity.cell
    tested = json.loads((run_dir / TEST_METRICS).read_text())
    assert result["metrics"] == tested["metrics"]
    assert set(result["metrics"]) >= {"test/miou", "test/iou_background", "test/iou_curve", "test/dice"}
    assert result["command"][-1] == "--test_after_fit=true" and result["cuda_visible_devices"] == ""
    assert (run_dir / result["ckpt_path"]).is_file() and result["epochs"] == 1 and result["steps"] == 2
    assert not list(run_dir.glob(".*.tmp"))
    # a finished run keeps its best weights only
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [Path(result["ckpt_path"]).name]

    forbid_subprocesses(monkeypatch)
    assert execute_run(run, tmp_path, CPU) == stored
    report = run_local([run], tmp_path, [CPU])
    assert report.done_before == [run] and not report.completed and report.ok


def test_a_changed_setting_is_a_new_run_not_a_done_one(tmp_path, capsys):
    grid = small_grid(tmp_path, seeds="[0]")
    out = tmp_path / "grid"
    tiny = [f"--set={o}" for o in TINY]
    assert grid_main(["run", str(grid), "--out", str(out), "--gpus", "none", *tiny]) == 0
    capsys.readouterr()
    assert grid_main(["list", str(grid), "--out", str(out), *tiny]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"1 runs in {out.resolve()}: 1 done"
    assert grid_main(["list", str(grid), "--out", str(out), *tiny, "--set=trainer.max_epochs=2"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[-1] == f"1 runs in {out.resolve()}: 1 new"
    (done,) = Grid.load(grid).runs(TINY)
    (longer,) = Grid.load(grid).runs([*TINY, "trainer.max_epochs=2"])
    assert listing[0] == f"new      {longer.relpath}" and longer.relpath != done.relpath
    assert longer.relpath.parent == done.relpath.parent  # the same keys, another fingerprint


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    (run,) = [
        r
        for r in tiny_runs("trainer.max_epochs=3", "checkpoint.every_minutes=0")
        if r.seed == 1 and r.loss == "ml" and r.fraction == 1.0
    ]
    run_dir = tmp_path / run.relpath
    folder = RunFolder(run_dir)
    # the run's own command, killed once it has a resumable checkpoint after its first epoch
    process = subprocess.Popen(
        run.command(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **CPU}
    )
    deadline = time.monotonic() + 600
    try:
        while not folder.last_checkpoint.is_file():
            assert process.poll() is None and time.monotonic() < deadline, "no resumable checkpoint"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert run_status(run_dir, run.identity.fingerprint) == "partial"
    result = execute_run(run, tmp_path, CPU)
    (attempt,) = attempts(run_dir)  # the same command again: the run resumes by itself
    assert "--ckpt_path" not in attempt
    assert f"lightning-seg: resuming {run_dir} from checkpoints/last.ckpt (step " in (run_dir / LOG).read_text()
    assert result["steps"] == 6 and result["epochs"] == 3
    # with the run's own loss, not the module's default (the checkpoint's hyperparameters do not override it)
    resumed_config = yaml.safe_load((run_dir / "logs" / "version_1" / "config.yaml").read_text())
    assert resumed_config["model"]["init_args"]["loss"] == "ml"
    # the resumed attempt did not start again from the first epoch
    with open(run_dir / "logs" / "version_1" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert "0" not in {row["epoch"] for row in rows if row["val/miou"]}


def test_a_run_that_finished_testing_is_only_finalised(tmp_path, monkeypatch):
    run = tiny_runs()[0]
    run_dir = tmp_path / run.relpath
    run_dir.mkdir(parents=True)
    metrics = {"test/miou": 0.5, "test/iou_blob": None}
    record = {"keys": run.keys, "fingerprint": run.identity.fingerprint, "metrics": metrics, "ckpt_path": "x"}
    (run_dir / TEST_METRICS).write_text(json.dumps(record))
    forbid_subprocesses(monkeypatch)
    result = execute_run(run, tmp_path)
    assert result["metrics"] == metrics and result["command"] is None and result["ckpt_path"] == "x"


def test_a_failing_run_is_reported_with_its_cause_and_log_and_the_others_go_on(tmp_path):
    good, bad = tiny_runs()[:1] + tiny_runs(*DIVERGING)[1:2]
    report = run_local([good, bad], tmp_path, [CPU, CPU])
    assert report.completed == [good] and list(report.failed) == [bad] and not report.ok
    failure = report.failed[bad]
    assert isinstance(failure, RunFailed) and failure.log == tmp_path / bad.relpath / LOG
    assert failure.cause.startswith("non-finite loss at step 1 (epoch 0, batch 1): L_CE=nan")
    assert "likely cause: the weights grew" in failure.cause and "SGD lr=1e+30" in failure.cause
    assert "likely cause" in failure.tail  # the log's last lines: the run's own error message
    assert run_status(tmp_path / bad.relpath) == "partial"
    assert json.loads((tmp_path / bad.relpath / Records.RUN).read_text())["status"] == "failed"
    summary = report.summary().splitlines()
    assert summary[0] == "0 already done, 1 completed, 1 failed, 0 busy in another process"
    assert summary[1] == f"FAILED {bad.relpath}: {failure.cause}"
    assert summary[2] == f"  log {failure.log}, last lines:" and summary[3].startswith("  | ")
    with pytest.raises(RunFailed, match="non-finite loss at step 1"):
        execute_run(bad, tmp_path, CPU)


def test_no_run_starts_when_a_fold_does_not_exist(tmp_path, monkeypatch, capsys):
    forbid_subprocesses(monkeypatch)
    grid = small_grid(tmp_path, seeds="[0]")
    grid.write_text(grid.read_text().replace("fold: [0]", "fold: [0, 5]"))
    assert grid_main(["run", str(grid), "--out", str(tmp_path / "out")]) == 2
    assert "SyntheticDataModule: fold must lie in [0, 4], got 5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # not even fold 0 started
    # the grid's axes are set in the grid file, not with --set (which would be overridden by the axis)
    assert grid_main(["list", str(grid), "--set=data.init_args.fold=3"]) == 2
    assert "--set data.init_args.fold: fold, fraction and seed are the grid's axes" in capsys.readouterr().err


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
    overrides = [*TINY, "trainer.max_epochs=2"]
    args += [f"--set={o}" for o in overrides]
    grid = small_grid(tmp_path)
    runs = Grid.load(grid).runs(overrides)
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
        deadline = time.monotonic() + 600
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

    assert grid_main(["run", str(grid), *args, "--parallel", "2", "--aggregate"]) == 0  # the last --parallel wins
    assert (first / RESULT).read_text() == finished  # not redone
    assert f"| {TINY_MODEL} | 1 | ce | 3 |" in (out / "results.md").read_text()  # aggregated once all were done
    assert len(attempts(first)) == 1
    assert all(run_status(out / r.relpath) == "done" for r in runs)
    capsys.readouterr()
    settings = [f"--set={o}" for o in overrides]  # the same settings: the same runs, done
    assert grid_main(["list", str(grid), "--out", str(out), *settings]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"3 runs in {out.resolve()}: 3 done"
    assert grid_main(["list", str(grid), "--out", str(out), *settings, "--commands"]) == 0
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
    rows = read_per_image(tmp_path / run.relpath / Records.PER_IMAGE)
    assert len(rows) == 4 * classes and len({r["id"] for r in rows}) == 4
    curvilinear = {"covid19": set(), "chase": {"retinal vessel"}, "drosophila": {"membrane"}}[dataset]
    for row in rows:
        scores = ["dice", "iou", "hd95", "nsd", *(["cldice"] if row["class"] in curvilinear else [])]
        assert all(math.isnan(row[s]) for s in scores) == (row["case"] == "both_empty"), row
        assert row["class"] in curvilinear or math.isnan(row["cldice"])
    if dataset == "drosophila":  # tiles are grouped by the section they were cut from
        assert all(row["sample_group"] == row["id"].split("/")[0] for row in rows)
    assert 0 <= result["metrics"]["test/ece"] <= 1
