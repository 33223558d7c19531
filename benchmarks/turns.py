"""Two settings of a real ``lightning-seg fit`` by turns in one run: what a per-step cost of Lightning's hooks
amounts to, free of the drift between runs.

One fit, as ``overhead.py`` runs it (the dataset's smallest fraction, the ``tiny`` model, image sides divided by
``--scale``, loading in the process), with one extra callback, :class:`Alternating`: it gives the run the two
settings of ``--compare`` (:data:`COMPARISONS`) by turns, every ``--block`` steps, and records each step's CPU time
(main thread) with the turn it ran in:

* ``profiler``: Lightning's ``PassThroughProfiler`` against the CLI's :class:`~lightning_seg.profilers.NullProfiler`
  (Lightning wraps every hook it calls in ``trainer.profiler.profile(name)``; how many per step: the
  ``NullProfiler``'s docstring);
* ``hook-bookkeeping``: the module's ``__setattr__`` without and with its fast path for the hook names Lightning sets
  on the module around each hook (:data:`lightning_seg.module.HOOK_BOOKKEEPING`); without it, the module's test of
  the name runs before ``nn.Module.__setattr__``, a little more than a module without the fast path pays.
* ``nonfinite-guard``: the configs' :class:`~lightning_seg.callbacks.NonFiniteGuard` (patience 1: a read of every
  gradient and one verdict per step) against the guard turned off (patience 0).

Both turns share the same run, batches and minutes of the machine, so whatever else the machine does falls on both
alike. Reported, over the steps of full batches (:func:`~overhead.full_batches`; ``steps each``: the fewer of the
two turns' steps, and of their full ones where a pass ends in a short batch): the lower decile and the mean step of
each, their ratios, and the paired ratio
(:func:`paired_ratio`): over every two neighbouring blocks, the ratio of their median steps (first turn over
second, whichever came first), its median and quartiles over all pairs. The step times of this project's CPU
drift from minute to minute; the paired ratio compares steps less than a second apart. The default block of 7
steps divides no validation interval of the configs, so the step after a validation falls to either turn.
``--control`` gives both turns the first setting: what the method reads as a difference where there is none.

Example::

    python benchmarks/turns.py --datasets chase covid19 --data-dir ../shared/data
    python benchmarks/turns.py --compare hook-bookkeeping --datasets chase --data-dir ../shared/data
    python benchmarks/turns.py --datasets chase --control --data-dir ../shared/data   # the first setting twice
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from lightning.pytorch.profilers import PassThroughProfiler

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import add_report_arguments, check_table_file, device_name, report_table  # noqa: E402
from overhead import (  # noqa: E402
    DATASETS,
    StepClock,
    add_fit_arguments,
    full_batches,
    mean_ms,
    run_fit,
    size_label,
    step_cpu_ms,
    steps_cell,
)

import lightning_seg.module  # noqa: E402
from lightning_seg.callbacks import NonFiniteGuard  # noqa: E402
from lightning_seg.profilers import NullProfiler  # noqa: E402


class Comparison(NamedTuple):
    """Two settings of a run, given to it by turns."""

    #: the names of the two settings, in the table's ``turns`` column
    labels: tuple[str, str]
    #: a fresh setting of each turn (``control``: the first one's twice)
    make: Callable[[int], object]
    #: gives the run a setting, at the start of a step
    apply: Callable[[object, object], None]


#: the module's own hook bookkeeping, read once (a turn replaces the module's global)
HOOK_BOOKKEEPING = lightning_seg.module.HOOK_BOOKKEEPING


def _set_hook_bookkeeping(trainer, names: frozenset) -> None:
    lightning_seg.module.HOOK_BOOKKEEPING = names  # read by SegmentationModule.__setattr__ at every call


def _set_guard_patience(trainer, patience: int) -> None:
    guards = [callback for callback in trainer.callbacks if isinstance(callback, NonFiniteGuard)]
    if not guards:
        raise RuntimeError("turns.py: the fit has no NonFiniteGuard to turn off (--nonfinite.patience)")
    for guard in guards:
        guard.patience = patience


#: what ``--compare`` chooses
COMPARISONS = {
    "profiler": Comparison(
        labels=("PassThroughProfiler", "NullProfiler"),
        make=lambda turn: (PassThroughProfiler, NullProfiler)[turn](),
        apply=lambda trainer, profiler: setattr(trainer, "profiler", profiler),
    ),
    "hook-bookkeeping": Comparison(
        labels=("nn.Module.__setattr__", "object.__setattr__"),
        make=lambda turn: (frozenset(), HOOK_BOOKKEEPING)[turn],
        apply=_set_hook_bookkeeping,
    ),
    "nonfinite-guard": Comparison(
        labels=("NonFiniteGuard(patience=1)", "NonFiniteGuard(patience=0)"),
        make=lambda turn: (1, 0)[turn],
        apply=_set_guard_patience,
    ),
}


def turn_labels(compare: str, control: bool) -> tuple[str, str]:
    """The names of the two turns' settings: the comparison's, or its first twice with ``control``."""
    first, second = COMPARISONS[compare].labels
    return (first, first) if control else (first, second)


HEADER = (
    "| date | machine | dataset (fraction) | model, image sides | turns | steps each "
    "| step CPU ms, lower decile: first / second "
    "| ratio | step CPU ms, mean: first / second | ratio | paired ratio, median (quartiles) | pairs |\n"
    "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


class Alternating(StepClock):
    """:class:`StepClock` that gives the run the two settings of a :data:`COMPARISONS` entry by turns, ``block``
    steps each, and records which turn every step ran in.

    Args:
        path: output file (JSON).
        compare: the key of :data:`COMPARISONS`.
        block: steps in a row with one setting.
        control: both turns with the first setting (a fresh one for each turn).
    """

    def __init__(self, path: str, compare: str = "profiler", block: int = 7, control: bool = False) -> None:
        super().__init__(path)
        self.comparison = COMPARISONS[compare]
        self.block = block
        self.settings = [self.comparison.make(0 if control else turn) for turn in (0, 1)]
        self.labels: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        which = (trainer.global_step // self.block) % len(self.settings)
        self.comparison.apply(trainer, self.settings[which])
        self.labels.append(which)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        record = json.loads(self.path.read_text())
        self.path.write_text(json.dumps({**record, "labels": self.labels}))


def paired_ratio(labels: list[int], seconds: list[float], images: list[int] | None = None) -> list[float]:
    """For every two neighbouring blocks (runs of steps in one turn), the ratio of the median step of the first
    turn's block (label 0) to that of the second turn's (label 1), whichever came first. With ``images`` (each step's
    batch), a block's median is over its steps of full batches (:func:`~overhead.full_batches`); the blocks stay
    those the fit ran, and a block without a full batch pairs with neither neighbour."""
    full = set(range(len(labels)) if images is None else full_batches(range(len(labels)), images))
    blocks: list[tuple[int, list[float]]] = []
    for index, (label, value) in enumerate(zip(labels, seconds, strict=True)):
        if not blocks or blocks[-1][0] != label:
            blocks.append((label, []))
        if index in full:
            blocks[-1][1].append(value)
    medians = [(label, statistics.median(values) if values else None) for label, values in blocks]
    return [
        (a_median / b_median) if a == 0 else (b_median / a_median)
        for (a, a_median), (b, b_median) in zip(medians, medians[1:], strict=False)
        if a_median is not None and b_median is not None
    ]


def by_turns(clock: dict, block: int) -> tuple[tuple[list[float], list[float]], tuple[int, int], list[float]]:
    """A record of turns of ``block`` steps (``labels``, ``step_cpu``, ``step_images``): the CPU seconds of each
    turn's steps of full batches, each turn's number of steps (all batches), and the paired ratios
    (:func:`paired_ratio`).

    Raises:
        SystemExit: a turn has no step of a full batch, or no two neighbouring blocks have one each.
    """
    labels, seconds, images = clock["labels"], clock["step_cpu"], clock["step_images"]
    steps: tuple[list[float], list[float]] = ([], [])
    for label, value in full_batches(list(zip(labels, seconds, strict=True)), images):
        steps[label].append(value)
    pairs = paired_ratio(labels, seconds, images)
    if not all(steps) or not pairs:
        raise SystemExit(
            f"{Path(sys.argv[0]).name}: error: {len(labels)} steps ({sum(map(len, steps))} of full batches) fill "
            f"less than two turns of --block {block} with full batches; give more steps or another --block"
        )
    return steps, (labels.count(0), labels.count(1)), pairs


def run(
    dataset: str, args: argparse.Namespace, root: Path
) -> tuple[tuple[list[float], list[float]], tuple[int, int], list[float]]:
    """One fit by turns: :func:`by_turns` of its record."""
    options = {"compare": args.compare, "block": args.block, "control": args.control}
    return by_turns(run_fit(dataset, args, root, "turns.Alternating", **options), args.block)


def quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartile (both the value itself for one value)."""
    if len(values) == 1:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


def step_cells(first: list[float], second: list[float]) -> list[str]:
    """The cells that compare two lists of step seconds: the lower deciles in ms and their ratio, the means in ms and
    their ratio."""
    deciles = step_cpu_ms(first), step_cpu_ms(second)
    means = mean_ms(first), mean_ms(second)
    return [
        f"{deciles[0]:.3f} / {deciles[1]:.3f}",
        f"{deciles[0] / deciles[1]:.3f}",
        f"{means[0]:.3f} / {means[1]:.3f}",
        f"{means[0] / means[1]:.3f}",
    ]


def ratio_cell(ratios: list[float]) -> str:
    """``median (lower quartile – upper quartile)`` of paired ratios, to three decimals."""
    return f"{statistics.median(ratios):.3f} ({' – '.join(f'{q:.3f}' for q in quartiles(ratios))})"


def paired_row(
    date: str,
    machine: str,
    model: str,
    dataset: str,
    compared: str,
    steps: str,
    seconds: tuple[list[float], list[float]],
    ratios: list[float],
    *more: str,
) -> str:
    """A row of a table that pairs two kinds of step in one run (this script's, ``twin.py``'s and ``loops.py``'s):
    what produced it, what it compares, its ``steps`` cell, the two sides' step times (:func:`step_cells`), the
    paired ratios (:func:`ratio_cell`), then the script's ``more`` cells."""
    cells = [date, machine, f"{dataset} ({DATASETS[dataset][0]:g})", model, compared, steps]
    return "| " + " | ".join([*cells, *step_cells(*seconds), ratio_cell(ratios), *more]) + " |"


def row(
    date: str,
    machine: str,
    model: str,
    turns: str,
    dataset: str,
    steps: tuple[list[float], list[float]],
    counts: tuple[int, int],
    pairs: list[float],
) -> str:
    """A table row; ``steps``: each turn's step seconds of full batches, ``counts``: each turn's steps."""
    full = min(len(seconds) for seconds in steps)
    each = steps_cell(min(counts), full, short=sum(counts) > sum(map(len, steps)))
    return paired_row(date, machine, model, dataset, turns, each, steps, pairs, f"{len(pairs)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fit_arguments(parser)
    parser.add_argument(
        "--compare", choices=list(COMPARISONS), default="profiler", help="the two settings (default profiler)"
    )
    parser.add_argument("--block", type=int, default=7, help="steps in a row with one setting (default 7)")
    parser.add_argument("--control", action="store_true", help="both turns with the first setting (an A/A run)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.block < 1:
        parser.error(f"--block must be ≥ 1, got {args.block}")
    if args.max_steps is not None and args.max_steps <= args.block:
        parser.error(f"--max-steps must exceed --block ({args.block}) for both turns to run, got {args.max_steps}")
    if args.output is not None:
        check_table_file(args.output, HEADER)
    machine = device_name(torch.device("cpu"), threads=args.threads)
    turns = " / ".join(turn_labels(args.compare, args.control))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            steps, counts, pairs = run(dataset, args, Path(tmp) / dataset)
            rows.append(row(args.date, machine, size_label(args), turns, dataset, steps, counts, pairs))
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
