"""The module's cost per training step against a plain step on the same batch, paired within one real fit.

``overhead.py`` compares the real fit's steps with a plain PyTorch loop run in another process, minutes apart: on
this project's shared CPU two runs of one command differ by up to ±10 % per step, as much as the cost to be measured.
Here both run in one process, step after step. The real ``lightning-seg fit`` (as ``overhead.py`` runs it: the
dataset's smallest fraction, the configs' step budget, callbacks and validations, the ``tiny`` model, image sides
divided by ``--scale``) gets one extra callback, :class:`PlainTwin`: a :class:`~overhead.StepClock` that, right
after each training step (``--twin-first``: right before it), trains a copy of the model with a copy of the loss and
its own Adam 1e-3 on the same batch, as ``overhead.py``'s plain loop does (``zero_grad``, forward, loss, backward,
``step``), and records the CPU time of that step (main thread) beside the real one's. Both steps run under the same
machine load, the same allocator settings and the same ``deterministic`` mode, less than a millisecond apart.

Reported per dataset, over the steps of full batches (:func:`~overhead.full_batches`; the ``steps`` cell says how
many where a pass ends in a short batch): the lower decile and the mean of the real steps and of the twin's, their
ratios, and the paired ratio: the median (and quartiles) over steps of each real step's CPU time over its twin's.
``module overhead, paired`` is that median minus 1: what the project's module and Lightning's loop add to a plain
step, the quantity of ``overhead.py``'s ``module overhead`` with another statistic (there the ratio of the lower
deciles of two runs). The twin's steps fall between the real ones, so this fit's shares of time outside steps mean
nothing; ``overhead.py`` measures those.

The order matters a little. After the step, the twin reads the batch the step has just read, and the real step
follows the twin and the next batch's fetch; ``--twin-first`` turns that round (the twin after the fetch and the
previous step's end, the real step on the batch the twin has just read). Rows of both orders, from runs close in
time, show what the order contributes. ``--control`` gives each step two twins (after it, or before it with
``--twin-first``), each with a model, loss and Adam of its own, and compares the first with the second in place of
the real step: what the method reads where both sides do the same work, one after the other on the same batch.

The twins draw no random numbers with the ``tiny`` model; a model with dropout would draw its masks from torch's
global generator, and the real run's draws would then differ from a run without a twin.

Example::

    python benchmarks/twin.py --datasets chase --data-dir ../shared/data --set data.init_args.num_workers=0
    python benchmarks/twin.py --model-kwargs '{"channels": 128}' --data-dir ../shared/data   # a longer step
    python benchmarks/twin.py --twin-first --datasets chase --data-dir ../shared/data   # the twin before each step
    python benchmarks/twin.py --control --datasets chase --data-dir ../shared/data   # plain twin against plain twin
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import add_report_arguments, check_table_file, device_name, report_table  # noqa: E402
from overhead import (  # noqa: E402
    StepClock,
    add_fit_arguments,
    cpu,
    full_batches,
    run_fit,
    size_label,
    steps_cell,
)
from turns import paired_row  # noqa: E402

HEADER = (
    "| date | machine | dataset (fraction) | model, image sides | compared | steps "
    "| step CPU ms, lower decile: first / second | ratio | step CPU ms, mean: first / second | ratio "
    "| paired ratio, median (quartiles) | module overhead, paired |\n"
    "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


class PlainTwin(StepClock):
    """:class:`~overhead.StepClock` that trains ``twins`` copies of the model, each as a plain loop would, one after
    the other right after each training step (or right before it), on the same batch, and records the CPU seconds
    of their steps (``twin_cpu``: one list per twin). The clock's step excludes them.

    Args:
        path: output file (JSON).
        twins: copies trained at each step (2 for the control).
        first: train them before the step (after the config's callbacks' ``on_train_batch_start``, before the
            CLI's own callbacks' and the module's, which fall inside the step), not after it.
    """

    def __init__(self, path: str, twins: int = 1, first: bool = False) -> None:
        super().__init__(path)
        self.twins = twins
        self.first = first
        self.twin_cpu: list[list[float]] = [[] for _ in range(twins)]

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.plain = []
        for _ in range(self.twins):
            model = copy.deepcopy(pl_module.model).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            self.plain.append((model, copy.deepcopy(pl_module.loss), optimizer))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first:
            self.train_twins(batch)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)  # the real step starts here

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # the real step ends here
        if not self.first:
            self.train_twins(batch)

    def train_twins(self, batch: dict) -> None:
        with torch.enable_grad():
            for (model, loss, optimizer), seconds in zip(self.plain, self.twin_cpu, strict=True):
                start = cpu()
                optimizer.zero_grad(set_to_none=True)
                loss(model(batch["image"]), batch["mask"]).backward()
                optimizer.step()
                seconds.append(cpu() - start)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        record = json.loads(self.path.read_text())
        self.path.write_text(json.dumps({**record, "twin_cpu": self.twin_cpu}))


def paired_ratios(real: list[float], twin: list[float]) -> list[float]:
    """Each real step's seconds over its twin's.

    Raises:
        ValueError: the two lists differ in length (a step without its twin), or a twin step took no time.
    """
    if len(real) != len(twin):
        raise ValueError(f"{len(real)} real steps against {len(twin)} twin steps")
    if not all(seconds > 0 for seconds in twin):
        raise ValueError("a twin step took no CPU time: the clock's resolution is too coarse for this step")
    return [a / b for a, b in zip(real, twin, strict=True)]


def compared(clock: dict, control: bool, first: bool = False) -> tuple[str, list[float], list[float]]:
    """What a row compares, from a :class:`PlainTwin` record: the real steps and the twin's, or with ``control`` the
    first twin's and the second's, those of full batches only (:func:`~overhead.full_batches`); ``first``: the twins
    ran before each step."""
    if control:
        label = "plain twin / second plain twin" + (", before the step" if first else "")
        one, two = clock["twin_cpu"]
    else:
        label = "Lightning / plain twin" + (" before it" if first else "")
        one, (two,) = clock["step_cpu"], clock["twin_cpu"]
    return label, full_batches(one, clock["step_images"]), full_batches(two, clock["step_images"])


def row(
    date: str, machine: str, model: str, dataset: str, label: str, steps: int, real: list[float], twin: list[float]
) -> str:
    """A table row; ``steps``: the run's, of which ``real`` and ``twin`` hold those of full batches."""
    ratios = paired_ratios(real, twin)
    overhead = f"{statistics.median(ratios) - 1:+.0%}"
    return paired_row(
        date, machine, model, dataset, label, steps_cell(steps, len(real)), (real, twin), ratios, overhead
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fit_arguments(parser)
    parser.add_argument("--control", action="store_true", help="two plain twins, the first against the second")
    parser.add_argument("--twin-first", action="store_true", help="train the twins before each step, not after it")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.output is not None:
        check_table_file(args.output, HEADER)
    machine = device_name(torch.device("cpu"), threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            twins = {"twins": 2 if args.control else 1, "first": args.twin_first}
            clock = run_fit(dataset, args, Path(tmp) / dataset, "twin.PlainTwin", **twins)
            label, real, twin = compared(clock, args.control, args.twin_first)
            steps = len(clock["step_cpu"])
            rows.append(row(args.date, machine, size_label(args), dataset, label, steps, real, twin))
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
