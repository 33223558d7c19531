"""Running a grid on Ray Tune: one trial per run, fractional GPUs, the same runs on a laptop or a cluster.

Each trial calls :func:`lightning_seg.grid.execute.execute_run`, so a trial is exactly a local run: the same
subprocess, folder, lock, resume and atomic ``result.json``. Ray only places trials: ``gpus_per_run=0.25``
packs four runs on each GPU of every node, and Ray sets each trial's ``CUDA_VISIBLE_DEVICES``.

On a cluster, start Ray on the nodes (``ray start --head`` / ``ray start --address=…``), install this project
in the same environment on every node, and give an output root and config files on a filesystem all nodes
share; pass ``address="auto"``. Without an address a local Ray instance is started.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .execute import GridReport, RunFailed, RunLocked, execute_run, run_status
from .spec import Run, check_runs


def _trainable(config: dict, runs: dict[str, Run], root: str) -> dict:
    """A Ray Tune function trainable: run one grid run, return its test metrics as the trial's result."""
    try:
        result = execute_run(runs[config["run"]], Path(root))
    except RunLocked:
        return {"outcome": "locked"}
    except RunFailed as failure:  # reported like a local failure: cause and log tail, not Ray's traceback
        return {"outcome": "failed", "cause": failure.cause, "log": str(failure.log), "tail": failure.tail}
    metrics = {key.replace("/", "_"): value for key, value in result["metrics"].items() if value is not None}
    return {"outcome": "completed", **metrics}


def run_ray(
    runs: Sequence[Run],
    root: Path,
    gpus_per_run: float = 0.0,
    cpus_per_run: float = 1.0,
    address: str | None = None,
    max_concurrent: int | None = None,
) -> GridReport:
    """Run every run not yet done as a Ray Tune trial with ``gpus_per_run`` GPUs and ``cpus_per_run`` CPUs."""
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise ImportError("the Ray backend needs Ray Tune: pip install 'lightning-seg[ray]'") from error
    if gpus_per_run < 0 or cpus_per_run <= 0:
        raise ValueError("gpus_per_run must be >= 0 and cpus_per_run > 0")
    root = Path(root).resolve()
    check_runs(runs)
    report = GridReport()
    todo = []
    for run in runs:
        (report.done_before if run_status(root / run.relpath, run.identity.fingerprint) == "done" else todo).append(run)
    if not todo:
        return report
    by_path = {str(run.relpath): run for run in todo}  # trials are named by their run folder
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(_trainable, runs=by_path, root=str(root)),
                {"cpu": cpus_per_run, "gpu": gpus_per_run},
            ),
            param_space={"run": tune.grid_search(list(by_path))},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(root / "ray"),
                verbose=1,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            ),
        )
        results = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    for result in results:
        run = by_path[result.config["run"]]
        outcome = (result.metrics or {}).get("outcome")
        if result.error is not None:
            report.failed[run] = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1]}"
        elif outcome == "failed":
            metrics = result.metrics
            report.failed[run] = RunFailed(run.relpath, metrics["cause"], Path(metrics["log"]), metrics["tail"])
        elif outcome == "locked":
            report.locked.append(run)
        else:
            report.completed.append(run)
    return report
