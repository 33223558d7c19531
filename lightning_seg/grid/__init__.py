"""Experiment grids: YAML expanded into single runs, run locally (packed per GPU) or on Ray, then aggregated."""

from .execute import GridReport, RunFailed, execute_run, run_local, run_status
from .spec import Grid, GridError, Run, check_runs

__all__ = [
    "Grid",
    "GridError",
    "GridReport",
    "Run",
    "RunFailed",
    "check_runs",
    "execute_run",
    "run_local",
    "run_status",
]
