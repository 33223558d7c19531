"""``lightning-seg-grid``: list, run and aggregate an experiment grid.

    lightning-seg-grid list configs/grids/reduced.yaml
    lightning-seg-grid run configs/grids/reduced.yaml --gpus 0 --runs-per-gpu 4
    lightning-seg-grid run configs/grids/reduced.yaml --backend ray --gpus-per-run 0.25 --ray-address auto
    lightning-seg-grid aggregate runs/grids/reduced

``run`` skips runs that are done (finished with the same settings) and resumes killed ones, so re-running the
same command after a crash or a kill carries on where it stopped; ``--set`` changes the settings, so it makes new
runs. Results go to ``runs/grids/<grid name>`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter
from pathlib import Path

from .aggregate import PAPER_TABLES, aggregate
from .execute import local_slots, run_local, run_status
from .spec import Grid, GridError, check_runs


def _default_out(grid: Grid) -> Path:
    return Path("runs") / "grids" / grid.name


def _visible_gpus(spec: str | None) -> list[str]:
    """``--gpus``: ``none``, a list ``0,1``, or ``auto`` (every GPU torch sees; none on a CPU-only machine)."""
    if spec is None or spec == "auto":
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    if spec == "none":
        return []
    return [gpu.strip() for gpu in spec.split(",") if gpu.strip()]


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="lightning-seg-grid", description=__doc__.split("\n\n")[0])
    commands = main.add_subparsers(dest="command", required=True)

    def grid_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("grid", type=Path, help="grid file, e.g. configs/grids/reduced.yaml")
        sub.add_argument("--out", type=Path, help="output root (default runs/grids/<grid name>)")
        sub.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override for every run, e.g. --set trainer.max_epochs=50 (repeatable)",
        )
        return sub

    listing = grid_command("list", "print every run of a grid and its state (done / partial / new)")
    listing.add_argument(
        "--commands", action="store_true", help="print each run's command line instead (for a scheduler of your own)"
    )
    run = grid_command("run", "run every run of a grid that is not done")
    run.add_argument("--backend", choices=("local", "ray"), default="local")
    run.add_argument("--gpus", help="local: GPUs to use, '0,1', 'auto' (default) or 'none'")
    run.add_argument("--runs-per-gpu", type=int, default=1, help="local: concurrent runs packed on each GPU")
    run.add_argument("--parallel", type=int, default=1, help="local without GPUs: concurrent CPU runs")
    run.add_argument("--gpus-per-run", type=float, default=0.0, help="ray: GPU share per run, e.g. 0.25")
    run.add_argument("--cpus-per-run", type=float, default=1.0, help="ray: CPUs per run")
    run.add_argument("--ray-address", help="ray: address of a running cluster ('auto'); default: start locally")
    run.add_argument(
        "--aggregate", action="store_true", help="aggregate the results of these runs when every one is done"
    )
    summary = commands.add_parser("aggregate", help="mean ± std and Wilcoxon tests of a grid's results")
    summary.add_argument("root", type=Path, help="output root of a grid, e.g. runs/grids/reduced")
    summary.add_argument("--out", type=Path, help="where to write results.md/summary.csv/wilcoxon.csv (default root)")
    summary.add_argument("--no-paper", action="store_true", help="leave out the paper's numbers")
    summary.add_argument(
        "--paper-model", help="set the paper's rows of this model (e.g. unet) beside every model of the runs"
    )
    return main


def _progress(total: int):
    """A Rich progress bar over runs; returns (callback for run_local, context manager)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]grid"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[last]}"),
    )
    task = progress.add_task("runs", total=total, last="")
    counts: Counter = Counter()

    def update(run, outcome: str) -> None:
        counts[outcome] += 1
        progress.update(task, advance=1, last=f"{outcome}: {run.relpath}  ({dict(counts)})")

    return update, progress


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "aggregate":
            paper = None if args.no_paper else PAPER_TABLES
            files = aggregate(args.root, args.out, paper_tables=paper, paper_model=args.paper_model)
            print(files["markdown"].read_text())
            print("\n".join(f"wrote {path}" for path in files.values()))
            return 0
        grid = Grid.load(args.grid)
        runs = grid.runs(args.set)
        out = (args.out or _default_out(grid)).resolve()
        if args.command == "list":
            states = Counter()
            for run in runs:
                state = run_status(out / run.relpath, run.identity.fingerprint)
                states[state] += 1
                print(shlex.join(run.command(out / run.relpath)) if args.commands else f"{state:8s} {run.relpath}")
            print(f"{len(runs)} runs in {out}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
            return 0
        check_runs(runs)
        if args.backend == "ray":
            from .ray_backend import run_ray

            report = run_ray(runs, out, args.gpus_per_run, args.cpus_per_run, address=args.ray_address)
        else:
            slots = local_slots(_visible_gpus(args.gpus), args.runs_per_gpu, args.parallel)
            print(f"{len(runs)} runs, {len(slots)} at a time, into {out}", flush=True)
            update, progress = _progress(len(runs))
            with progress:
                report = run_local(runs, out, slots, on_progress=update)
        print(report.summary())
        if report.ok and args.aggregate:
            files = aggregate(out, folders=[out / run.relpath for run in runs])
            print(f"aggregated: {files['markdown']}")
    except (GridError, ValueError, FileNotFoundError) as error:
        print(f"lightning-seg-grid: error: {error}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
