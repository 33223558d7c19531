"""What Lightning's default profiler costs per training step in a real ``lightning-seg fit``, against the
:class:`~lightning_seg.profilers.NullProfiler` the CLI gives the trainer instead.

Lightning wraps every hook it calls in ``trainer.profiler.profile(name)`` (how many per step: the
``NullProfiler``'s docstring). One fit, as ``overhead.py`` runs it (the dataset's smallest fraction, the
``tiny`` model, image sides divided by ``--scale``, loading in the process), with one extra callback,
:class:`AlternatingProfiler`: it hands the trainer Lightning's ``PassThroughProfiler`` and the ``NullProfiler`` by
turns, every ``--block`` steps, and records each step's CPU time (main thread) with the profiler it ran under.
Both profilers share the same run, batches and minutes of the machine, so whatever else the machine does falls
on both alike. Reported: the lower decile and the mean step of each, their ratios, and the paired ratio
(:func:`paired_ratio`): over every two neighbouring blocks, the ratio of their median steps (Lightning's profiler
over the ``NullProfiler``, whichever came first), its median and quartiles over all pairs. The step times of this
project's CPU drift from minute to minute; the paired ratio compares steps less than a second apart. The default
block of 7 steps divides no validation interval of the configs, so the step after a validation falls to either
profiler. ``--control`` gives both turns Lightning's profiler: what the method reads as a difference where there
is none.

Example::

    python benchmarks/profiler.py --datasets chase covid19 --data-dir ../shared/data
    python benchmarks/profiler.py --datasets chase --control --data-dir ../shared/data   # the same profiler twice
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.profilers import PassThroughProfiler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import check_table_file, device_name, report_table  # noqa: E402
from overhead import DATASETS, REPO, StepClock, add_fit_arguments, child_env, fit_args, mean_ms, step_cpu_ms  # noqa: E402

from lightning_seg.profilers import NullProfiler  # noqa: E402

#: the profilers of the two turns
PROFILERS = (PassThroughProfiler, NullProfiler)


def turn_profilers(control: bool) -> tuple[type, type]:
    """The profiler classes of the two turns: :data:`PROFILERS`, or the first twice with ``control``."""
    return (PROFILERS[0], PROFILERS[0]) if control else PROFILERS


HEADER = (
    "| date | machine | dataset (fraction) | turns | steps each | step CPU ms, lower decile: first / second "
    "| ratio | step CPU ms, mean: first / second | ratio | paired ratio, median (quartiles) | pairs |\n"
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


class AlternatingProfiler(StepClock):
    """:class:`StepClock` that gives the trainer the profilers of :data:`PROFILERS` by turns, ``block`` steps each,
    and records which turn every step ran in.

    Args:
        path: output file (JSON).
        block: steps in a row under one profiler.
        control: both turns with the first profiler (Lightning's).
    """

    def __init__(self, path: str, block: int = 7, control: bool = False) -> None:
        super().__init__(path)
        self.block = block
        self.profilers = [cls() for cls in turn_profilers(control)]
        self.labels: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        which = (trainer.global_step // self.block) % len(self.profilers)
        trainer.profiler = self.profilers[which]
        self.labels.append(which)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        record = json.loads(self.path.read_text())
        self.path.write_text(json.dumps({**record, "labels": self.labels}))


def paired_ratio(labels: list[int], seconds: list[float]) -> list[float]:
    """For every two neighbouring blocks (runs of steps in one turn), the ratio of the median step of the first
    turn's block (label 0) to that of the second turn's (label 1), whichever came first."""
    blocks: list[tuple[int, list[float]]] = []
    for label, value in zip(labels, seconds, strict=True):
        if blocks and blocks[-1][0] == label:
            blocks[-1][1].append(value)
        else:
            blocks.append((label, [value]))
    medians = [(label, statistics.median(values)) for label, values in blocks]
    return [
        (a_median / b_median) if a == 0 else (b_median / a_median)
        for (a, a_median), (b, b_median) in zip(medians, medians[1:], strict=False)
    ]


def run(dataset: str, args: argparse.Namespace, root: Path) -> tuple[tuple[list[float], list[float]], list[float]]:
    """One fit; the CPU seconds of its steps under each profiler, and the paired ratios."""
    clock_file = root / "clock.json"
    callback = {
        "class_path": "profiler.AlternatingProfiler",
        "init_args": {"path": str(clock_file), "block": args.block, "control": args.control},
    }
    command = [sys.executable, "-m", "lightning_seg.cli", *fit_args(dataset, args, root)]
    command.append(f"--trainer.callbacks+={json.dumps(callback)}")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "stdout.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(args), cwd=REPO)
    if done.returncode != 0:
        tail = "\n".join((root / "stdout.log").read_text().splitlines()[-15:])
        raise RuntimeError(f"the fit failed ({done.returncode}); the end of its output:\n{tail}")
    clock = json.loads(clock_file.read_text())
    steps: tuple[list[float], list[float]] = ([], [])
    for which, seconds in zip(clock["labels"], clock["step_cpu"], strict=True):
        steps[which].append(seconds)
    if not all(steps):
        raise SystemExit(
            f"profiler.py: error: {len(clock['labels'])} steps fill less than two turns of --block {args.block}"
        )
    return steps, paired_ratio(clock["labels"], clock["step_cpu"])


def quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartile (both the value itself for one value)."""
    if len(values) == 1:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


def row(date: str, machine: str, turns: str, dataset: str, steps: tuple[list[float], ...], pairs: list[float]) -> str:
    lightning, null = steps
    deciles = step_cpu_ms(lightning), step_cpu_ms(null)
    means = mean_ms(lightning), mean_ms(null)
    cells = [
        date,
        machine,
        f"{dataset} ({DATASETS[dataset][0]:g})",
        turns,
        f"{min(len(lightning), len(null))}",
        f"{deciles[0]:.3f} / {deciles[1]:.3f}",
        f"{deciles[0] / deciles[1]:.3f}",
        f"{means[0]:.3f} / {means[1]:.3f}",
        f"{means[0] / means[1]:.3f}",
        f"{statistics.median(pairs):.3f} ({' – '.join(f'{q:.3f}' for q in quartiles(pairs))})",
        f"{len(pairs)}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fit_arguments(parser)
    parser.add_argument("--block", type=int, default=7, help="steps in a row under one profiler (default 7)")
    parser.add_argument("--control", action="store_true", help="both turns with Lightning's profiler (an A/A run)")
    parser.add_argument("--output", type=Path, default=None, help="append the rows to this Markdown file")
    parser.add_argument("--date", default=dt.date.today().isoformat())
    args = parser.parse_args(argv)
    if args.block < 1:
        parser.error(f"--block must be ≥ 1, got {args.block}")
    if args.max_steps is not None and args.max_steps <= args.block:
        parser.error(f"--max-steps must exceed --block ({args.block}) for both turns to run, got {args.max_steps}")
    if args.output is not None:
        check_table_file(args.output, HEADER)
    torch.set_num_threads(args.threads)  # the fit's, for the machine's name
    machine = device_name(torch.device("cpu"))
    turns = " / ".join(cls.__name__ for cls in turn_profilers(args.control))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            rows.append(row(args.date, machine, turns, dataset, *run(dataset, args, Path(tmp) / dataset)))
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
