"""What a training loop costs per step: Lightning's automatic optimisation against its manual one, and Lightning
Fabric against a plain loop, each paired within one process.

Lightning's ``Trainer`` loop costs a fixed part of every step that keeps the overhead issue's 15 % target out of
reach at a step of 1-3 ms on this project's CPU (benchmarks/README.md, "The fixed cost"). Two ways to spend less and
keep the ``lightning`` package measure here, on the model, loss and batches of a real fit (``overhead.py``'s: the
dataset's smallest fraction, the ``tiny`` model, image sides divided by ``--scale``, loading in the process):

* ``--compare manual-optimization``: a bare Lightning fit (``overhead.py``'s :class:`~overhead.BareModule`: the
  model, the loss and Adam 1e-3 in a ``Trainer`` without callbacks, loggers, checkpoints, progress bar or validation)
  whose module switches every ``--block`` steps between automatic optimisation and manual optimisation
  (``zero_grad``, ``manual_backward`` and ``step`` in ``training_step``: the same arithmetic). What automatic
  optimisation adds: its closure, the ``optimizer_step``, ``on_before_zero_grad`` and ``optimizer_zero_grad`` hooks
  and its progress counts; the backward hooks and ``on_before_optimizer_step`` run in both. Paired as ``turns.py``
  pairs: over every two neighbouring blocks, the ratio of their median steps (automatic over manual).
* ``--compare fabric``: the model and Adam set up by ``lightning.Fabric`` (CPU, one process), a step being
  ``zero_grad``, forward, loss, ``fabric.backward`` and ``step``; right after each, a plain copy of the model with
  its own loss and Adam takes the same step on the same batch, as ``twin.py`` pairs them. Paired ratio: the median
  of the per-step ratios (Fabric over plain).

``--control`` runs the first side as the second: Lightning's automatic optimisation in both turns, or a plain loop
against its plain twin; what the pairing reads where both sides do the same work. Times are CPU seconds of the main
thread, over the steps of full batches (:func:`~overhead.full_batches`). ``steps`` counts the run's steps: shared
by the two turns of ``manual-optimization``, each taken by both sides of ``fabric``.

What each would give up: manual optimisation, the ``Trainer``'s gradient clipping and accumulation by config (no
config of this project sets them; ``LightningModule.clip_gradients`` still works) and its stepping of a learning
rate scheduler (which ``SegmentationModule`` accepts); a Fabric loop, the ``Trainer`` itself, whose hooks this
project's callbacks (the non-finite guard, checkpoints, records), logging and validation rely on.

Example::

    python benchmarks/loops.py --compare manual-optimization --datasets chase --data-dir ../shared/data
    python benchmarks/loops.py --compare fabric --scale 32 --model-kwargs '{"channels": 1}' --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import add_report_arguments, check_table_file, device_name, report_table  # noqa: E402
from overhead import (  # noqa: E402
    BareModule,
    StepClock,
    add_fit_arguments,
    bare_trainer,
    batch_images,
    build_parts,
    cpu,
    full_batches,
    size_label,
    steps_cell,
    training_batches,
)
from turns import by_turns, paired_row  # noqa: E402
from twin import paired_ratios  # noqa: E402

from lightning_seg.callbacks import HostMemoryReuse  # noqa: E402
from lightning_seg.cli import DEBUG_VARIABLE, debug_requested, describe  # noqa: E402

HEADER = (
    "| date | machine | dataset (fraction) | model, image sides | compared | steps "
    "| step CPU ms, lower decile: first / second | ratio | step CPU ms, mean: first / second | ratio "
    "| paired ratio, median (quartiles) |\n"
    "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"
)


class SwitchingModule(BareModule):
    """The bare module, optimised by Lightning's automatic optimisation or by its own ``training_step``
    (``automatic_optimization = False``: zero the gradients, backward through Lightning, step), whichever
    :attr:`automatic_optimization` says at the step."""

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        optimizer = self.optimizers()
        # set_to_none as Lightning's optimizer_zero_grad hook, which zeroes after the forward: the same arithmetic
        optimizer.zero_grad(set_to_none=True)
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        optimizer.step()
        return loss


class OptimisationTurns(StepClock):
    """:class:`~overhead.StepClock` that gives the module automatic optimisation for ``block`` steps, then manual
    for ``block``, and so on, records which (``labels``: 0 automatic, 1 manual), and ends the fit after ``steps``.
    ``control``: automatic optimisation in both turns.

    It counts the steps itself: Lightning keeps one count for each kind of optimisation and its ``global_step`` is
    the count of the kind in use, so neither that nor ``max_steps`` follows a fit that switches.
    """

    def __init__(self, path: str, steps: int, block: int = 7, control: bool = False) -> None:
        super().__init__(path)
        self.stop_after = steps
        self.block = block
        self.control = control
        self.labels: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        turn = (len(self.labels) // self.block) % 2
        pl_module.automatic_optimization = self.control or not turn
        self.labels.append(turn)
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if len(self.labels) == self.stop_after:
            trainer.should_stop = True


#: a run's result: its steps, how many had full batches, the CPU seconds of the two sides' steps of full batches, and
#: the paired ratios
Result = tuple[int, int, tuple[list[float], list[float]], list[float]]


def manual_optimization(args: argparse.Namespace) -> Result:
    """A bare fit by turns of automatic and manual optimisation; paired over neighbouring blocks."""
    model, loss, loader, deterministic = build_parts(args)
    clock = OptimisationTurns(str(Path(args.root) / "clock.json"), args.steps, args.block, args.control)
    # the clock ends the fit: Lightning's step counts do not follow one that switches
    trainer = bare_trainer(clock, deterministic, max_epochs=-1)
    trainer.fit(SwitchingModule(model, loss), train_dataloaders=loader)
    record = {"labels": clock.labels, "step_cpu": clock.step_cpu, "step_images": clock.step_images}
    turns, counts, pairs = by_turns(record, args.block)
    return sum(counts), sum(map(len, turns)), turns, pairs


def timed_step(model, loss, optimizer, backward, batch: dict) -> float:
    """CPU seconds of one training step: ``zero_grad``, forward, loss, ``backward(loss)``, ``step``."""
    start = cpu()
    optimizer.zero_grad(set_to_none=True)
    backward(loss(model(batch["image"]), batch["mask"]))
    optimizer.step()
    return cpu() - start


#: one side of a paired step: a model, its loss, its optimizer, and how to take the loss's backward
Side = tuple[torch.nn.Module, Callable[..., torch.Tensor], torch.optim.Optimizer, Callable[[torch.Tensor], None]]


def sides(model: torch.nn.Module, loss, control: bool = False) -> tuple[Side, Side]:
    """The two sides of ``fabric``: ``model`` and ``loss`` with Adam 1e-3 set up by Fabric (``control``: as they
    are), and a plain copy of both with its own Adam, sharing nothing with the first."""
    twin = copy.deepcopy(model).train()
    plain = (twin, copy.deepcopy(loss), torch.optim.Adam(twin.parameters(), lr=1e-3), torch.Tensor.backward)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if control:
        return (model.train(), loss, optimizer, torch.Tensor.backward), plain
    fabric = L.Fabric(accelerator="cpu", devices=1)
    fabric_model, fabric_optimizer = fabric.setup(model.train(), optimizer)
    return (fabric_model, loss, fabric_optimizer, fabric.backward), plain


def fabric_steps(args: argparse.Namespace) -> Result:
    """A Fabric loop (``control``: a plain one) with a plain twin after each step; paired per step."""
    model, loss, loader, _ = build_parts(args)
    HostMemoryReuse().apply()  # the configs' allocator setting, as the other loops have it
    first, second = sides(model, loss, args.control)
    seconds: tuple[list[float], list[float]] = ([], [])
    images: list[int] = []
    for batch in training_batches(loader, args.steps):
        seconds[0].append(timed_step(*first, batch))
        seconds[1].append(timed_step(*second, batch))
        images.append(batch_images(batch))
    one, two = (full_batches(times, images) for times in seconds)
    return len(images), len(one), (one, two), paired_ratios(one, two)


#: what ``--compare`` chooses: the labels of its rows (the comparison, the control) and the run
COMPARISONS = {
    "manual-optimization": (
        ("automatic / manual optimisation (Lightning)", "automatic / automatic optimisation (Lightning)"),
        manual_optimization,
    ),
    "fabric": (("Fabric / plain twin", "plain / plain twin"), fabric_steps),
}


def row(date: str, machine: str, model: str, dataset: str, label: str, result: Result) -> str:
    """A table row of one run's :data:`Result`."""
    steps, full, seconds, pairs = result
    return paired_row(date, machine, model, dataset, label, steps_cell(steps, full), seconds, pairs)


def measure(args: argparse.Namespace) -> list[str]:
    """The table's rows: one run of the comparison per dataset, each ended in one line if it fails."""
    machine = device_name(torch.device("cpu"))
    labels, run = COMPARISONS[args.compare]
    label = labels[args.control]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            one = argparse.Namespace(**{**vars(args), "datasets": [dataset], "root": str(Path(tmp) / dataset)})
            Path(one.root).mkdir()
            try:
                result = run(one)
            except Exception as error:  # one line, as lightning-seg says it; the traceback on request
                if debug_requested():
                    raise
                said = describe(error, traceback_by=f"{DEBUG_VARIABLE}=1")
                raise SystemExit(f"loops.py: error: the {dataset} run failed: {said}") from None
            rows.append(row(args.date, machine, size_label(args), dataset, label, result))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fit_arguments(parser)
    parser.add_argument("--compare", choices=list(COMPARISONS), default="manual-optimization")
    parser.add_argument("--steps", type=int, default=2400, help="training steps of each run (default 2400)")
    parser.add_argument("--block", type=int, default=7, help="manual-optimization: steps in a row of one kind")
    parser.add_argument("--control", action="store_true", help="the first loop on both sides (an A/A run)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.block < 1:
        parser.error(f"--block must be ≥ 1, got {args.block}")
    if args.max_steps is not None or args.val_check_interval is not None:
        parser.error(
            "--max-steps and --val-check-interval set a fit's trainer, which these loops do not use; give --steps"
        )
    if args.steps <= 2 * args.block:
        parser.error(f"--steps must exceed two blocks ({2 * args.block}) for a pair of turns, got {args.steps}")
    if args.output is not None:
        check_table_file(args.output, HEADER)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # the loops run in this process; set back for a caller (a test)
    try:
        rows = measure(args)
    finally:
        torch.set_num_threads(previous)
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    # as overhead.py's runs: CUDA hidden, so that Adam's CUDA check costs nothing (benchmarks/README.md); set by the
    # script only, so that main() called from other code (a test) leaves that process's environment as it was
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    sys.exit(main())
