"""Where a real ``lightning-seg fit`` spends its time, and what the module costs per step over a plain loop.

For each dataset (``--datasets``: drosophila, covid19, chase) at its smallest training fraction (1/8, 1/8,
1/4), the script runs the real thing, as a grid would: ``python -m lightning_seg.cli fit`` with
``configs/base.yaml``, ``configs/data/<dataset>.yaml`` and ``configs/losses/<loss>.yaml`` (CAML), the
configs' step budget, validation cadence, callbacks, loggers and loader settings, ``--test_after_fit=true``,
on the real files under ``--data-dir``. Only the scale is changed so that a training step is as short as a
GPU step (a few ms up to a few tens of ms on a CPU): the ``tiny`` model (two 3×3 convolutions) and every
image side divided by ``--scale`` (8: COVID-19 and CHASE at 32², Drosophila's 1024² sections at 128² with
32² crops and tiles, so each split has the same number of samples as in the paper's setting).

One extra callback, :class:`StepClock` (given on the command line, ``--trainer.callbacks+=``), stamps the training
steps (``on_train_batch_start`` to ``on_train_batch_end``, after the config's callbacks' step hooks; the callbacks
the CLI adds after them, the model size, the non-finite guard, the config's copy and the checkpoints, start a step
inside it and end it outside), the validations, the checkpoint writes (``Trainer.save_checkpoint``), the sanity
check, the test and the epoch of every step, in wall time and in CPU time of the main thread. The parent times the
process from start to exit. A row gives:

* ``steps``: the run's training steps, and how many of them had a full batch where some did not (a pass's short
  last batch): every step time below is taken over the steps of full batches (:func:`full_batches`);
* ``step CPU ms, lower decile``: the training step in CPU time of the main thread, lower decile over the run's
  steps (:func:`step_cpu_ms`: a step without logging and without other tenants' share of the machine), for
  Lightning, bare Lightning and the plain loop (below), and ``module overhead``, the ratio Lightning / plain
  minus 1: the work the module and Lightning add inside a plain step (metric updates, hooks, progress bar);
  ``of which bare Lightning``: bare Lightning / plain minus 1, the part that Lightning's loop costs by itself,
  whatever the module does;
* ``step CPU ms, mean`` and ``module overhead, means``: the same with the mean step, the logging steps (every
  ``log_every_n_steps``-th: the loss parts and the loss logged) and the steps after a validation included, but
  also whatever other processes took from the run's core at the time. CPU time, unlike wall time, does not grow
  while other processes wait for a core, so these figures hold on a busy machine better than wall times;
* ``outside steps``: the share of the training phase's wall time (``on_train_start`` to ``on_train_end``)
  spent outside training steps, split into ``validation`` (without the checkpoint writes it triggers),
  ``checkpoint``, ``epoch ends`` (gaps between the last step of an epoch and the first of the next: the
  loader's restart and first batch, epoch-end hooks) and ``between steps`` (the other gaps: batch fetches,
  logger writes); ``outside steps, CPU`` is the same share of the main thread's CPU time (waits for loader
  workers, and other processes' use of the cores, left out);
* ``bare Lightning: outside steps`` and ``plain loop: outside steps``: the same share for the baselines (the
  plain loop's wall time from the first batch request to the last step, less its steps): what fetching the
  same batches costs in Lightning's loop with nothing of the project's, and without Lightning;
* seconds: ``training`` phase, ``startup`` (process start to ``on_fit_start``: imports, config, model and
  data construction), ``test and exit`` (``on_train_end`` to the process's exit: the test after fit,
  teardown), ``wall`` (the whole process).
* ``page faults per step``: the process's minor page faults in the training phase (its validations included) per
  step, for each of the three: fresh memory written (a fault per 4 KiB page), which a step that reuses its freed
  memory does not take (:class:`~lightning_seg.callbacks.HostMemoryReuse`).

The plain loop (``--worker plain``) builds the same model, data module and loss from the same command line
(``build_cli(run=False)``), sets the same ``deterministic`` mode, and trains with Adam 1e-3 for as many
steps, with nothing else: no logging, metrics, callbacks or validation. Its step runs from the batch in hand
to the end of ``optimizer.step()``, timed as the Lightning step is.

Both baselines reuse freed host memory as the configs' :class:`~lightning_seg.callbacks.HostMemoryReuse` has the
real run do (glibc's malloc thresholds): otherwise whether a step takes page faults depends on a process's
earlier allocations, and a comparison would count that luck as a cost of one side.

Bare Lightning (``--worker bare``) trains the same model, data and loss with a minimal LightningModule (the
loss in ``training_step``, Adam 1e-3) in a ``Trainer`` without callbacks (but the clock and
:class:`~lightning_seg.callbacks.HostMemoryReuse`), loggers, checkpoints, progress bar or validation, in the
same ``deterministic`` mode and with the real run's profiler (the CLI's
:class:`~lightning_seg.profilers.NullProfiler`), timed by :class:`StepClock` as the real run is.

Runs alternate (Lightning, bare Lightning, plain) per dataset, ``--repeats`` times; each figure is the median
over repeats.
Results are printed as Markdown (a row names the machine, and the model with the divisor of the image sides) and,
with ``--output FILE``, appended to a file; ``--records FILE`` appends one JSON line per dataset with every
repeat's figures, the command and the code (commit, and whether tracked files differed from it), which
``overhead_plot.py`` draws.

Examples::

    python benchmarks/overhead.py                                  # all three datasets, 2 repeats
    python benchmarks/overhead.py --datasets chase --repeats 1     # one quick look
    python benchmarks/overhead.py --set data.init_args.num_workers=0   # any fit override
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L

from lightning_seg.callbacks import HostMemoryReuse
from lightning_seg.profilers import NullProfiler
from lightning_seg.run import code_version

sys.path.insert(0, str(Path(__file__).resolve().parent))  # models.py beside it, also when loaded by file path

from models import add_report_arguments, check_table_file, device_name, report_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
#: dataset -> (smallest training fraction, overrides that divide every image side by ``scale``)
DATASETS = {
    "drosophila": (
        0.125,
        lambda s: [f"--data.init_args.image_size={1024 // s}", f"--data.init_args.crop_size={256 // s}"],
    ),
    "covid19": (0.125, lambda s: [f"--data.init_args.image_size={256 // s}", f"--data.init_args.crop_size={224 // s}"]),
    "chase": (0.25, lambda s: [f"--data.init_args.image_size={256 // s}", f"--data.init_args.crop_size={224 // s}"]),
}
#: where the child processes find :class:`StepClock` (this file, imported as ``overhead``)
CLOCK = "overhead.StepClock"
HEADER = (
    "| date | machine | dataset (fraction) | model, image sides | steps | validations | step CPU ms, lower decile: Lightning / bare Lightning / plain "
    "| module overhead | of which bare Lightning | step CPU ms, mean: Lightning / bare Lightning / plain "
    "| module overhead, means | outside steps | validation "
    "| checkpoint | epoch ends | between steps | bare Lightning: outside steps | plain loop: outside steps "
    "| outside steps, CPU | training s | startup s | test and exit s | wall s "
    "| page faults per step: Lightning / bare Lightning / plain |\n"
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def now() -> float:
    """System-wide monotonic seconds (CLOCK_MONOTONIC on Linux: the same clock in every process)."""
    return time.monotonic()


def faults() -> int:
    """Minor page faults of this process so far: fresh memory that a step writes (a fault per 4 KiB page)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def cpu() -> float:
    """CPU seconds of the calling thread: the work of a step, whatever else the machine is running (with one
    intra-op thread, tensor operations run in the calling thread)."""
    return time.thread_time()


class StepClock(L.Callback):
    """Stamps the phases of a fit into ``path`` (JSON), rewritten at every teardown.

    Args:
        path: output file.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.events: dict[str, float] = {}
        self.steps: list[tuple[float, float]] = []
        self.validations: list[tuple[float, float]] = []
        self.checkpoints: list[tuple[float, float]] = []
        #: CPU seconds of the main thread in each step, and at the start and end of training
        self.step_cpu: list[float] = []
        #: images in each step's batch (:func:`full_batches`)
        self.step_images: list[int] = []
        self.cpu: dict[str, float] = {}
        #: the process's minor page faults at the start and end of training
        self.faults: dict[str, int] = {}
        self._step_start = self._step_cpu = self._val_start = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        save = trainer.save_checkpoint
        if getattr(save, "_clocked", False):
            return

        def timed_save(*args, **kwargs):
            start = now()
            try:
                return save(*args, **kwargs)
            finally:
                self.checkpoints.append((start, now()))

        timed_save._clocked = True
        trainer.save_checkpoint = timed_save

    def _mark(self, name: str) -> None:
        self.events[name] = now()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._mark("fit_start")

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._mark("sanity_start")

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self._mark("sanity_end")

    def on_train_start(self, trainer, pl_module) -> None:
        self._mark("train_start")
        self.cpu["train_start"] = cpu()
        self.faults = {"train_start": faults()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_start, self._step_cpu = now(), cpu()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((self._step_start, now(), trainer.current_epoch))
        self.step_cpu.append(cpu() - self._step_cpu)
        self.step_images.append(batch_images(batch))

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = now()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validations.append((self._val_start, now()))

    def on_train_end(self, trainer, pl_module) -> None:
        self._mark("train_end")
        self.cpu["train_end"] = cpu()
        self.faults["train_end"] = faults()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._mark("fit_end")

    def on_test_start(self, trainer, pl_module) -> None:
        self._mark("test_start")

    def on_test_end(self, trainer, pl_module) -> None:
        self._mark("test_end")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        record = {
            "events": self.events,
            "steps": self.steps,
            "validations": self.validations,
            "checkpoints": self.checkpoints,
            "step_cpu": self.step_cpu,
            "step_images": self.step_images,
            "cpu": self.cpu,
            "faults": self.faults,
            "global_step": trainer.global_step,
        }
        self.path.write_text(json.dumps(record))


# --------------------------------------------------------------------------------------------------- arithmetic


def _total(intervals) -> float:
    return sum(end - start for start, end, *_ in intervals)


def _inside(intervals, outer) -> float:
    """Seconds of ``intervals`` that lie inside any of ``outer``."""
    return sum(
        max(0.0, min(end, o_end) - max(start, o_start)) for start, end, *_ in intervals for o_start, o_end in outer
    )


def _union(intervals) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end, *_ in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def phases(clock: dict, process: tuple[float, float]) -> dict:
    """Split a Lightning run's wall time (``process`` = start, exit) into the phases of the module docstring."""
    events, steps = clock["events"], clock["steps"]
    start, end = process
    train = events["train_end"] - events["train_start"]
    ckpt_train = [c for c in clock["checkpoints"] if events["train_start"] <= c[0] <= events["train_end"]]
    step_seconds = _total(steps)
    validation = _total(clock["validations"]) - _inside(ckpt_train, clock["validations"])
    checkpoint = _total(ckpt_train)
    durations = sorted(end - start for start, end, _ in steps)
    # gaps between consecutive steps that cross an epoch end: loader restart, epoch-end hooks and metrics
    busy = _union(clock["validations"] + ckpt_train)
    turnovers = [(a[1], b[0]) for a, b in zip(steps, steps[1:], strict=False) if a[2] != b[2]]
    turnover = _total(turnovers) - _inside(busy, turnovers)
    return {
        "steps": len(steps),
        "validations": len(clock["validations"]),
        "step_ms": 1000 * statistics.median(durations),
        "step_mean_ms": 1000 * step_seconds / len(steps),
        "startup": events["fit_start"] - start,
        "setup": events["train_start"] - events["fit_start"],
        "sanity": events.get("sanity_end", 0.0) - events.get("sanity_start", 0.0),
        "train": train,
        "step_seconds": step_seconds,
        "validation": validation,
        "checkpoint": checkpoint,
        "epoch_ends": turnover,
        "between": train - step_seconds - validation - checkpoint - turnover,
        "test_and_exit": end - events["train_end"],
        "wall": end - start,
        "outside_train": 1 - step_seconds / train,
        "outside_process": 1 - step_seconds / (end - start),
        **cpu_phases(clock),
    }


def batch_images(batch: dict) -> int:
    """The images in a training batch: its masks' first dimension."""
    return len(batch["mask"])


def full_batches(values: list, images: list[int]) -> list:
    """The entries of ``values`` (one per step) of the steps whose batch held as many images as the run's largest.

    A pass over a training set whose size is not a multiple of the batch size ends in a short batch, and a step on
    fewer images is a shorter step: COVID-19 1/8 has 9 slices, so one step in three is a batch of one
    (docs/protocol.md lists such cells). Mixed into the step-time statistics, such steps become the lower decile and
    raise a step's relative overhead; every step time of these benchmarks is taken over full batches only (shares of
    time outside steps and page faults per step count every step).

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(values) != len(images):
        raise ValueError(f"{len(values)} steps against {len(images)} batch sizes")
    full = max(images, default=0)
    return [value for value, count in zip(values, images, strict=True) if count == full]


def steps_cell(total: int, full: int, short: bool | None = None) -> str:
    """A row's count of steps: ``3600``, or ``3600 (2400 full)`` where steps of short batches were left out of the
    step times (:func:`full_batches`): where ``short`` says so, by default where ``full`` is not ``total``."""
    if short is None:
        short = full != total
    return f"{total} ({full} full)" if short else f"{total}"


def step_cpu_ms(step_cpu: list[float]) -> float:
    """The lower decile of the steps' CPU times, in ms (interpolated between the measured steps, never below the
    fastest): what a step itself costs. On a shared machine other tenants only ever add to a step, and their share
    comes and goes within a run: the median step of one unchanged plain loop moved between 2.58 and 6.31 ms from one
    block of steps to the next here, its lower decile between 2.52 and 3.26 ms (benchmarks/README.md). The longer
    logging steps (one in ``log_every_n_steps``) fall outside it, as outside the median: the mean has them."""
    if len(step_cpu) == 1:
        return 1000 * step_cpu[0]
    return 1000 * statistics.quantiles(step_cpu, n=10, method="inclusive")[0]


def mean_ms(seconds: list[float]) -> float:
    return 1000 * sum(seconds) / len(seconds)


def cpu_phases(clock: dict) -> dict:
    """The main thread's CPU time: the step of a full batch (lower decile and mean, and how many there were), and the
    share of the training phase's CPU outside steps."""
    if not clock.get("step_cpu"):
        return {}
    train = clock["cpu"]["train_end"] - clock["cpu"]["train_start"]
    full = full_batches(clock["step_cpu"], clock["step_images"])
    return {
        "step_cpu_ms": step_cpu_ms(full),
        "step_cpu_mean_ms": mean_ms(full),
        "full_steps": len(full),
        "outside_cpu": 1 - sum(clock["step_cpu"]) / train,
        "faults_per_step": faults_per_step(clock["faults"], len(clock["step_cpu"])),
    }


def faults_per_step(counts: dict[str, int], steps: int) -> float:
    """The page faults of the training phase (its validations included) per step."""
    return (counts["train_end"] - counts["train_start"]) / steps


# --------------------------------------------------------------------------------------------------- workers


def fit_args(dataset: str, args: argparse.Namespace, root: Path) -> list[str]:
    """The ``fit`` arguments of one benchmark run (without the clock)."""
    fraction, scale = DATASETS[dataset]
    extra = [f"--trainer.max_steps={args.max_steps}"] if args.max_steps else []
    if args.val_check_interval:
        extra.append(f"--trainer.val_check_interval={args.val_check_interval}")
    extra += [f"--{item}" for item in args.set]
    return [
        "fit",
        *(
            x
            for name in ("base.yaml", f"data/{dataset}.yaml", f"losses/{args.loss}.yaml")
            for x in ("--config", str(CONFIGS / name))
        ),
        f"--data.init_args.data_dir={args.data_dir}",
        f"--data.init_args.train_fraction={fraction}",
        *scale(args.scale),
        f"--model.init_args.model={args.model}",
        f"--model.init_args.model_kwargs={json.dumps(args.model_kwargs)}",
        *extra,
        f"--trainer.default_root_dir={root}",
        "--test_after_fit=true",
    ]


def child_env(args: argparse.Namespace) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), env.get("PYTHONPATH")]))
    return env


def run_fit(dataset: str, args: argparse.Namespace, root: Path, clock: str, **clock_args) -> dict:
    """The real fit of ``dataset`` in a child process, with the clock callback ``clock`` (``module.Class`` of a
    :class:`StepClock`, importable from this folder) writing to ``root/clock.json``; that file's record.

    Raises:
        SystemExit: the fit failed: its own error line (or its last line of output), in one line.
    """
    clock_file = root / "clock.json"
    callback = json.dumps({"class_path": clock, "init_args": {"path": str(clock_file), **clock_args}})
    command = [sys.executable, "-m", "lightning_seg.cli", *fit_args(dataset, args, root)]
    command.append(f"--trainer.callbacks+={callback}")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "stdout.log", "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(args), cwd=REPO)
    if done.returncode != 0:
        lines = [line for line in (root / "stdout.log").read_text().splitlines() if line.strip()] or ["no output"]
        said = [line for line in lines if line.startswith("lightning-seg: error:")] or lines
        raise SystemExit(f"{Path(sys.argv[0]).name}: the {dataset} fit failed (exit {done.returncode}): {said[-1]}")
    return json.loads(clock_file.read_text())


def run_lightning(dataset: str, args: argparse.Namespace, root: Path) -> dict:
    start = now()
    clock = run_fit(dataset, args, root, CLOCK)
    return phases(clock, (start, now()))


def run_baseline(worker: str, dataset: str, args: argparse.Namespace, root: Path, steps: int) -> dict:
    """One of the baselines (``plain`` or ``bare``) in a child process, for ``steps`` steps."""
    command = [sys.executable, __file__, "--worker", worker, "--datasets", dataset, "--steps", str(steps)]
    command += ["--data-dir", str(args.data_dir), "--scale", str(args.scale), "--loss", args.loss]
    command += ["--model", args.model, "--model-kwargs", json.dumps(args.model_kwargs), "--root", str(root)]
    command += [f"--set={item}" for item in args.set]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(args), cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{worker} baseline failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_parts(args: argparse.Namespace):
    """The model, loss and training loader of the Lightning run's command line, seeded and in its
    ``deterministic`` mode."""
    import torch

    from lightning_seg.cli import build_cli

    (dataset,) = args.datasets
    cli = build_cli(fit_args(dataset, args, Path(args.root))[1:], run=False)
    L.seed_everything(cli.config.seed_everything, verbose=False)
    deterministic = cli.config.trainer.deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
    data = cli.datamodule
    data.setup("fit")
    return cli.model.model, cli.model.loss, data.train_dataloader(), deterministic


def training_batches(loader, steps: int) -> Iterator[dict]:
    """``steps`` batches of the training ``loader``, pass after pass, with each epoch's draws set before it as Lightning
    sets them (``set_epoch``): the batches of a fit of ``steps`` steps, for the loops that are not one."""
    epoch = 0
    while steps > 0:
        loader.batch_sampler.sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            yield batch
            steps -= 1
            if steps == 0:
                return


def plain_worker(args: argparse.Namespace) -> None:
    """The same model, data and loss as the Lightning run, trained by a bare loop; prints one JSON line."""
    import torch

    model, loss, loader, _ = build_parts(args)
    HostMemoryReuse().apply()  # the configs' allocator setting, so that page faults are nobody's cost
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    durations, cpu_durations, images, step, start = [], [], [], 0, now()
    counts = {"train_start": faults()}
    for batch in training_batches(loader, args.steps):
        t0, c0 = now(), cpu()
        optimizer.zero_grad(set_to_none=True)
        value = loss(model(batch["image"]), batch["mask"])
        value.backward()
        optimizer.step()
        durations.append(now() - t0)
        cpu_durations.append(cpu() - c0)
        images.append(batch_images(batch))
        step += 1
    wall, counts["train_end"] = now() - start, faults()
    record = {"step_ms": 1000 * statistics.median(durations), "step_mean_ms": 1000 * sum(durations) / step}
    record["faults_per_step"] = faults_per_step(counts, step)
    full = full_batches(cpu_durations, images)
    record.update(step_cpu_ms=step_cpu_ms(full), step_cpu_mean_ms=mean_ms(full), full_steps=len(full))
    print(json.dumps({**record, "wall": wall, "wall_per_step_ms": 1000 * wall / step}))


class BareModule(L.LightningModule):
    """Model, loss and Adam 1e-3 in Lightning's automatic optimisation, nothing else: no logging, no metrics."""

    def __init__(self, model, loss) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def training_step(self, batch, batch_idx):
        return self.loss(self.model(batch["image"]), batch["mask"])

    def configure_optimizers(self):
        import torch

        return torch.optim.Adam(self.parameters(), lr=1e-3)


def bare_trainer(clock: StepClock, deterministic, **length) -> L.Trainer:
    """A CPU ``Trainer`` with nothing of the project's but ``clock``, :class:`~lightning_seg.callbacks.HostMemoryReuse`
    and the real run's profiler (the CLI's :class:`~lightning_seg.profilers.NullProfiler`): no loggers, checkpoints,
    progress bar, model summary or validation. ``length``: ``max_steps`` or ``max_epochs``."""
    return L.Trainer(
        **length,
        accelerator="cpu",
        deterministic=deterministic,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock, HostMemoryReuse()],
        profiler=NullProfiler(),
    )


def bare_worker(args: argparse.Namespace) -> None:
    """The same model, data and loss in a bare Lightning fit (no callbacks, loggers, checkpoints, progress bar
    or validation): Lightning's own cost per step; prints one JSON line."""
    model, loss, loader, deterministic = build_parts(args)
    clock = StepClock(str(Path(args.root) / "bare-clock.json"))
    trainer = bare_trainer(clock, deterministic, max_steps=args.steps)
    trainer.fit(BareModule(model, loss), train_dataloaders=loader)
    durations = [end - start for start, end, _ in clock.steps]
    train = clock.events["train_end"] - clock.events["train_start"]
    full = full_batches(clock.step_cpu, clock.step_images)
    record = {"step_ms": 1000 * statistics.median(durations), "step_cpu_ms": step_cpu_ms(full)}
    record["step_cpu_mean_ms"], record["full_steps"] = mean_ms(full), len(full)
    record["outside_train"] = 1 - sum(durations) / train
    record["faults_per_step"] = faults_per_step(clock.faults, len(clock.step_cpu))
    print(json.dumps(record))


# --------------------------------------------------------------------------------------------------- report


#: the overhead issue's targets, for :func:`shares`' ``module`` (per step) and ``outside`` (share of training time)
TARGETS = {"module": 0.15, "outside": 0.10}


def shares(lightning: dict, bare: dict, plain: dict) -> dict:
    """The comparisons a row makes, as fractions: ``module`` and ``module_mean`` (the Lightning run's step over the
    plain loop's, lower decile and mean, minus 1), ``bare`` (bare Lightning's decile over the plain loop's, minus 1),
    and the shares of training wall time outside steps: ``outside``, ``bare_outside`` (each a run's own share) and
    ``plain_outside`` (1 minus the plain loop's step over its wall time per step)."""
    return {
        "module": lightning["step_cpu_ms"] / plain["step_cpu_ms"] - 1,
        "bare": bare["step_cpu_ms"] / plain["step_cpu_ms"] - 1,
        "module_mean": lightning["step_cpu_mean_ms"] / plain["step_cpu_mean_ms"] - 1,
        "outside": lightning["outside_train"],
        "bare_outside": bare["outside_train"],
        "plain_outside": 1 - plain["step_mean_ms"] / plain["wall_per_step_ms"],
    }


def size_label(args: argparse.Namespace) -> str:
    """The model with its arguments and the image scale, as a row names them: ``tiny(channels=8), ÷8``."""
    kwargs = ", ".join(f"{k}={v}" for k, v in args.model_kwargs.items())
    return f"{args.model}({kwargs}), ÷{args.scale}"


def row(date: str, machine: str, model: str, dataset: str, lightning: dict, bare: dict, plain: dict) -> str:
    fraction, train, share = DATASETS[dataset][0], lightning["train"], shares(lightning, bare, plain)
    cells = [
        date,
        machine,
        f"{dataset} ({fraction:g})",
        model,
        steps_cell(round(lightning["steps"]), round(lightning["full_steps"])),
        f"{lightning['validations']:.0f}",
        f"{lightning['step_cpu_ms']:.2f} / {bare['step_cpu_ms']:.2f} / {plain['step_cpu_ms']:.2f}",
        f"{share['module']:+.0%}",
        f"{share['bare']:+.0%}",
        f"{lightning['step_cpu_mean_ms']:.2f} / {bare['step_cpu_mean_ms']:.2f} / {plain['step_cpu_mean_ms']:.2f}",
        f"{share['module_mean']:+.0%}",
        f"{share['outside']:.1%}",
        *(f"{lightning[k] / train:.1%}" for k in ("validation", "checkpoint", "epoch_ends", "between")),
        f"{share['bare_outside']:.1%}",
        f"{share['plain_outside']:.1%}",
        f"{lightning['outside_cpu']:.1%}",
        *(f"{lightning[k]:.1f}" for k in ("train", "startup", "test_and_exit", "wall")),
        " / ".join(f"{run['faults_per_step']:.0f}" for run in (lightning, bare, plain)),
    ]
    return "| " + " | ".join(cells) + " |"


def median_record(records: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in records) for k in records[0]}


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that :func:`fit_args` and :func:`child_env` read: which fit, at which scale (also ``turns.py``'s)."""
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("LIGHTNING_SEG_DATA") or REPO.parent / "shared" / "data")
    )
    parser.add_argument("--scale", type=int, default=8, help="divide every image side by this (default 8)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--model-kwargs", type=json.loads, default={"channels": 8})
    parser.add_argument("--loss", default="caml")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="override trainer.max_steps (default: the config's)"
    )
    parser.add_argument("--val-check-interval", type=int, default=None, help="override trainer.val_check_interval")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="extra fit override (repeatable)"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="OMP_NUM_THREADS of every run (default 1)")


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (also how ``overhead_plot.py`` reads a record's command back)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fit_arguments(parser)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--records", type=Path, default=None, help="append one JSON line per dataset (every repeat) to this file"
    )
    add_report_arguments(parser)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temporary one)")
    parser.add_argument("--worker", choices=list(WORKERS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--root", default="", help=argparse.SUPPRESS)
    return parser


def check_records_file(path: Path, output: Path | None) -> None:
    """Refuse, before minutes of runs, a ``--records`` file that could not take this run's records.

    Raises:
        SystemExit: its folder does not exist, it is the ``--output`` file, or it holds a line that is not a JSON
            object (another file given by mistake).
    """
    if not path.parent.is_dir():
        raise SystemExit(f"--records {path}: no folder {path.parent}; create it or give another path")
    if output is not None and path.resolve() == output.resolve():
        raise SystemExit(f"--records {path}: the --output file; give the JSON lines a file of their own")
    if path.is_file():
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError):
            lines = [None]
        if not all(isinstance(line, dict) for line in lines):
            raise SystemExit(f"--records {path}: holds lines that are not JSON objects; give a file of records")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.root).mkdir(parents=True, exist_ok=True)
        WORKERS[args.worker](args)
        return 0
    if args.output is not None:
        check_table_file(args.output, HEADER)  # before minutes of runs, not after them
    if args.records is not None:
        check_records_file(args.records, args.output)
    import torch

    machine, model, code = device_name(torch.device("cpu"), threads=args.threads), size_label(args), code_version(REPO)
    command = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    print(machine, model, flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        for dataset in args.datasets:
            lightning, bare, plain = [], [], []
            for repeat in range(args.repeats):
                lightning.append(run_lightning(dataset, args, base / dataset / f"lightning{repeat}"))
                steps = int(lightning[-1]["steps"])
                bare.append(run_baseline("bare", dataset, args, base / dataset / f"bare{repeat}", steps))
                plain.append(run_baseline("plain", dataset, args, base / dataset / f"plain{repeat}", steps))
                record = {**lightning[-1], "bare": bare[-1], "plain": plain[-1]}
                print(f"{dataset} repeat {repeat}: {json.dumps(record)}", file=sys.stderr)
            if args.records is not None:  # per dataset, first: a later failure keeps what ran
                record = {"date": args.date, "machine": machine, "model": model, "dataset": dataset}
                record |= {"fraction": DATASETS[dataset][0], "code": code, "command": command}
                record |= {"lightning": lightning, "bare": bare, "plain": plain}
                with args.records.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            rows.append(row(args.date, machine, model, dataset, *(median_record(r) for r in (lightning, bare, plain))))
    report_table(HEADER, rows, args.output)
    return 0


#: the baselines, each run in a child process of its own
WORKERS = {"plain": plain_worker, "bare": bare_worker}


if __name__ == "__main__":
    sys.exit(main())
