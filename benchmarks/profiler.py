"""What Lightning's default profiler costs per training step in a real ``lightning-seg fit``, against the
:class:`~lightning_seg.profilers.NullProfiler` the CLI gives the trainer instead.

Lightning wraps every hook it calls (about 20 per training step, plus 6 per callback) in
``trainer.profiler.profile(name)``. One fit, as ``overhead.py`` runs it (the dataset's smallest fraction, the
``tiny`` model, image sides divided by ``--scale``, loading in the process), with one extra callback,
:class:`AlternatingProfiler`: it hands the trainer Lightning's ``PassThroughProfiler`` and the ``NullProfiler`` by
turns, every ``--block`` steps, and records each step's CPU time (main thread) with the profiler it ran under.
Both profilers share the same run, batches and minutes of the machine, so whatever else the machine does falls
on both alike. Reported: the lower decile and the mean step of each, their ratios, and the paired ratio
(:func:`paired_ratio`): over each block of Lightning's profiler and the block of the ``NullProfiler`` after it, the
ratio of their median steps, its median and quartiles over all pairs. The step times of this project's CPU
spread so widely from minute to minute that the whole-run ratios move by a few percent from one run to the next;
the paired ratio compares steps a few ms apart.

Example::

    python benchmarks/profiler.py --datasets chase covid19 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.profilers import PassThroughProfiler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import check_table_file, device_name, report_table  # noqa: E402
from overhead import DATASETS, REPO, StepClock, child_env, fit_args, mean_ms, step_cpu_ms  # noqa: E402

from lightning_seg.profilers import NullProfiler  # noqa: E402

#: the two profilers, by the name a row gives them
PROFILERS = {"Lightning's PassThroughProfiler": PassThroughProfiler, "NullProfiler": NullProfiler}
HEADER = (
    "| date | machine | dataset (fraction) | steps each | step CPU ms, lower decile: PassThroughProfiler / "
    "NullProfiler | ratio | step CPU ms, mean: PassThroughProfiler / NullProfiler | ratio "
    "| paired ratio, median (quartiles) | pairs |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


class AlternatingProfiler(StepClock):
    """:class:`StepClock` that gives the trainer each profiler of :data:`PROFILERS` by turns, ``block`` steps each,
    and records which one every step ran under.

    Args:
        path: output file (JSON).
        block: steps in a row under one profiler.
    """

    def __init__(self, path: str, block: int = 10) -> None:
        super().__init__(path)
        self.block = block
        self.profilers = [cls() for cls in PROFILERS.values()]
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
    """For each block (a run of steps under one profiler) of Lightning's profiler (label 0) followed by a block of
    the ``NullProfiler`` (label 1), the ratio of their median step times."""
    blocks: list[tuple[int, list[float]]] = []
    for label, value in zip(labels, seconds, strict=True):
        if blocks and blocks[-1][0] == label:
            blocks[-1][1].append(value)
        else:
            blocks.append((label, [value]))
    return [
        statistics.median(first) / statistics.median(second)
        for (a, first), (b, second) in zip(blocks, blocks[1:], strict=False)
        if (a, b) == (0, 1)
    ]


def run(dataset: str, args: argparse.Namespace, root: Path) -> tuple[dict[str, list[float]], list[float]]:
    """One fit; the CPU seconds of its steps under each profiler, and the paired ratios."""
    clock_file = root / "clock.json"
    callback = {
        "class_path": "profiler.AlternatingProfiler",
        "init_args": {"path": str(clock_file), "block": args.block},
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
    steps = {name: [] for name in PROFILERS}
    for which, seconds in zip(clock["labels"], clock["step_cpu"], strict=True):
        steps[list(PROFILERS)[which]].append(seconds)
    return steps, paired_ratio(clock["labels"], clock["step_cpu"])


def quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartile (both the value itself for one value)."""
    if len(values) == 1:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


def row(date: str, machine: str, dataset: str, steps: dict[str, list[float]], pairs: list[float]) -> str:
    lightning, null = steps.values()
    deciles = step_cpu_ms(lightning), step_cpu_ms(null)
    means = mean_ms(lightning), mean_ms(null)
    cells = [
        date,
        machine,
        f"{dataset} ({DATASETS[dataset][0]:g})",
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
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("LIGHTNING_SEG_DATA") or REPO.parent / "shared" / "data")
    )
    parser.add_argument("--scale", type=int, default=8, help="divide every image side by this (default 8)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--model-kwargs", type=json.loads, default={"channels": 8})
    parser.add_argument("--loss", default="caml")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps")
    parser.add_argument("--val-check-interval", type=int, default=None, help="override trainer.val_check_interval")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra fit override")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the fit (default 1)")
    parser.add_argument("--block", type=int, default=10, help="steps in a row under one profiler (default 10)")
    parser.add_argument("--output", type=Path, default=None, help="append the rows to this Markdown file")
    parser.add_argument("--date", default=dt.date.today().isoformat())
    args = parser.parse_args(argv)
    if args.block < 1:
        parser.error(f"--block must be ≥ 1, got {args.block}")
    if args.output is not None:
        check_table_file(args.output, HEADER)
    torch.set_num_threads(args.threads)  # the fit's, for the machine's name
    machine = device_name(torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            rows.append(row(args.date, machine, dataset, *run(dataset, args, Path(tmp) / dataset)))
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
