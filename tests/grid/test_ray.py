"""The Ray Tune backend on a local Ray instance: fractional GPUs place runs, results are the local runner's."""

from __future__ import annotations

import json

import pytest
import ray

from lightning_seg.grid import Grid, run_status
from lightning_seg.grid.aggregate import collect, summarize
from lightning_seg.grid.cli import main as grid_main
from lightning_seg.grid.ray_backend import run_ray
from lightning_seg.run import Records
from tests.grid.test_execute import DIVERGING, TINY, small_grid, tiny_runs

RESULT = Records.RESULT


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs and one *logical* GPU, so that fractional GPU requests are scheduled."""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_runs_share_a_gpu_and_write_the_same_results_as_locally(local_ray, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runs = tiny_runs()[:2]
    report = run_ray(runs, tmp_path, gpus_per_run=0.5, cpus_per_run=1)
    assert report.ok and sorted(map(str, (r.relpath for r in report.completed))) == sorted(str(r.relpath) for r in runs)
    for run in runs:
        result = json.loads((tmp_path / run.relpath / RESULT).read_text())
        assert result["keys"] == run.keys and "test/miou" in result["metrics"]
        # Ray gave each trial half of logical GPU 0; the run saw it as its CUDA_VISIBLE_DEVICES
        assert result["cuda_visible_devices"] == "0"
    # Ray's own result.json files in its trial folders are not mistaken for runs
    assert list((tmp_path / "ray").rglob(RESULT))
    assert [s.n for s in summarize(collect(tmp_path))] == [2]
    # done runs are not scheduled again
    again = run_ray(runs, tmp_path, gpus_per_run=0.5)
    assert again.done_before == runs and not again.completed


def test_the_grid_cli_runs_on_ray_and_reports_failures(local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    grid, out = small_grid(tmp_path, seeds="[0, 1]"), tmp_path / "grid"
    args = ["run", str(grid), "--backend", "ray", "--out", str(out), "--cpus-per-run", "1"]
    overrides = [*TINY, *DIVERGING]
    assert grid_main([*args, *(f"--set={o}" for o in overrides)]) == 1
    summary = capsys.readouterr().out
    assert "0 completed, 2 failed" in summary
    for run in Grid.load(grid).runs(overrides):
        assert f"FAILED {run.relpath}: non-finite loss at step 1" in summary  # the cause, not Ray's traceback
        assert run_status(out / run.relpath) == "partial"


def test_bad_resources_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="gpus_per_run must be >= 0"):
        run_ray(tiny_runs()[:1], tmp_path, gpus_per_run=-1)
