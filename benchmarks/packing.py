"""Aggregate training throughput of k runs packed on one GPU, against one plain run.

A grid (``lightning-seg-grid run ... --runs-per-gpu k``) packs k training runs per GPU as concurrent
processes, because one small U-Net run (batch 4, 256×256) leaves a large GPU mostly idle. This script measures
what packing buys: for each k in ``--packs`` (1 2 4 8) it starts k worker processes of itself at once, each with
the environment a grid worker gets (``lightning_seg.grid.execute.local_slots``: ``CUDA_VISIBLE_DEVICES`` of the
chosen GPU; on the CPU, ``CUDA_VISIBLE_DEVICES=""`` and an even share of the cores in ``OMP_NUM_THREADS``).

Each worker trains the real thing: ``lightning.Trainer.fit`` of ``SegmentationModule(model="unet",
loss="caml", num_classes=5, in_channels=1)`` (Adam, train metrics and all) on an in-memory random dataset, with
``deterministic="warn"`` as in ``configs/base.yaml``, no checkpointing, logger, progress bar or validation, for
``--warmup`` + ``--steps`` steps. A callback takes a wall-clock timestamp (``time.time()``, after
``torch.cuda.synchronize()`` on a GPU) at the end of every training step. After its warm-up steps each worker
waits at a barrier until all k are warm, so that their timed steps start together; it then prints its
timestamps as one JSON line.

The parent takes the window in which all k workers are timing: from the latest start to the earliest end. It
counts each worker's steps inside that window, interpolating linearly within a step between its end
timestamps, and reports images per second in all (aggregate), per run, and the aggregate relative to k = 1.
A row is invalid when the window is empty or shorter than half (``--min-overlap``) the workers' median timed
span.

Results are printed as a Markdown table, and appended to ``--output`` if given (the header is written when the
file is new). Each row carries the date, device name and torch version. The exit status is 1 if a worker
failed (the tail of its stderr is shown) or a row is invalid.

Examples::

    python benchmarks/packing.py                                   # GPU 0, 256×256, batch 4, k = 1 2 4 8
    python benchmarks/packing.py --output benchmarks/results.md    # ... and append the rows to a file
    python benchmarks/packing.py --precision bf16-mixed --gpu 1
    python benchmarks/packing.py --device cpu --size 64 --packs 1 2 --steps 10 --warmup 3   # CPU smoke check
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

sys.path.insert(0, str(Path(__file__).resolve().parent))  # models.py beside this script
from models import add_report_arguments, append_table, device_name  # noqa: E402

from lightning_seg.grid.execute import local_slots  # noqa: E402
from lightning_seg.grid.parent import PARENT_PID_VARIABLE  # noqa: E402

HEADER = (
    "| date | device | torch | model | precision | batch × size | runs packed | aggregate images/s "
    "| images/s per run | vs 1 run |\n|---|---|---|---|---|---|---:|---:|---:|---:|"
)
#: Prefix of the worker's result line on stdout (anything else there is ignored).
RESULT_PREFIX = "PACKING_RESULT "
#: ``--base-channels`` on the CPU by default: the small U-Net of the tests.
CPU_BASE_CHANNELS = 8
#: A row is invalid when the common window is shorter than this fraction of the workers' median timed span.
MIN_OVERLAP = 0.5
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


# --------------------------------------------------------------------------------------------------- arithmetic


def _steps_done(times: Sequence[float], t: float) -> float:
    """Steps completed by time ``t``: ``times[0]`` is the start, ``times[i]`` the end of step i; linear within a step."""
    if t <= times[0]:
        return 0.0
    if t >= times[-1]:
        return float(len(times) - 1)
    i = bisect.bisect_right(times, t)  # times[i - 1] <= t < times[i]
    return i - 1 + (t - times[i - 1]) / (times[i] - times[i - 1])


def packed_throughput(times: Sequence[Sequence[float]], batch: int, min_overlap: float = MIN_OVERLAP) -> dict:
    """Aggregate throughput of concurrent workers over the window in which all of them are timing.

    Args:
        times: per worker, its wall-clock timestamps ``[start, end of step 1, ..., end of step n]`` (increasing).
        batch: images per step.
        min_overlap: the result is invalid when the window is shorter than this fraction of the median of the
            workers' timed spans (``times[-1] - times[0]``).

    Returns:
        ``start``, ``end`` and ``seconds`` of the window, ``steps`` (per worker, fractional), ``images`` (in
        all), ``aggregate`` and ``per_run`` images/s, and ``error`` (``None``, or why the result is invalid;
        then the rates are ``None``).
    """
    if not times or any(len(t) < 2 for t in times):
        raise ValueError("every worker needs a start and at least one step end")
    start = max(t[0] for t in times)
    end = min(t[-1] for t in times)
    seconds = end - start
    result = dict(start=start, end=end, seconds=seconds, steps=None, images=None, aggregate=None, per_run=None)
    if seconds <= 0:
        return {**result, "error": f"the workers' timed spans do not overlap (window {seconds:.3f} s)"}
    span = statistics.median(t[-1] - t[0] for t in times)
    if seconds < min_overlap * span:
        return {
            **result,
            "error": f"common window {seconds:.3f} s is shorter than {min_overlap:g} × the median timed span "
            f"{span:.3f} s: a worker finished long before the others",
        }
    steps = [_steps_done(t, end) - _steps_done(t, start) for t in times]
    images = batch * sum(steps)
    return {
        **result,
        "steps": steps,
        "images": images,
        "aggregate": images / seconds,
        "per_run": images / seconds / len(times),
        "error": None,
    }


# ------------------------------------------------------------------------------------------------------- worker


class RandomSegmentation(torch.utils.data.Dataset):
    """``length`` samples ``{"image": float32 C×S×S, "mask": long S×S}`` cycling over ``distinct`` random ones."""

    def __init__(self, length: int, size: int, in_channels: int, classes: int, distinct: int = 16, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.length = length
        self.images = torch.randn(distinct, in_channels, size, size, generator=generator)
        self.masks = torch.randint(0, classes, (distinct, size, size), generator=generator)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.images)
        return {"image": self.images[i], "mask": self.masks[i]}


def pipe_barrier(ready_fd: int, go_fd: int) -> Callable[[], None]:
    """Tell the parent this worker is warm (a byte on ``ready_fd``), then wait for its go (a byte on ``go_fd``)."""

    def wait() -> None:
        os.write(ready_fd, b"r")
        os.close(ready_fd)
        if os.read(go_fd, 1) != b"g":
            raise SystemExit("the parent cancelled the benchmark (or died) before the timed steps")
        os.close(go_fd)

    return wait


def _step_timer(warmup: int, barrier: Callable[[], None] | None, cuda: bool):
    import lightning as L

    class StepTimer(L.Callback):
        """Wall-clock time at the end of each step; ``times[0]`` is the start of the timed steps."""

        def __init__(self) -> None:
            self.seen = 0
            self.times: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.seen += 1
            if self.seen < warmup:
                return
            if self.seen == warmup and barrier is not None:
                barrier()  # the timed steps start when all workers are warm
            self.times.append(time.time())

    return StepTimer()


def worker(args: argparse.Namespace) -> int:
    """Train for ``warmup + steps`` steps and print the timestamps of the timed ones as one JSON line."""
    import lightning as L

    from lightning_seg import SegmentationModule
    from lightning_seg.grid.parent import end_with_parent

    end_with_parent()  # as a grid's run does: end when the parent dies
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"CUDA is not available (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    L.seed_everything(args.seed, verbose=False)
    model_kwargs = {} if args.base_channels is None else {"base_channels": args.base_channels}
    module = SegmentationModule(
        model=args.model,
        model_kwargs=model_kwargs,
        loss="caml",
        num_classes=args.classes,
        in_channels=args.in_channels,
    )
    total = args.warmup + args.steps
    data = RandomSegmentation(total * args.batch, args.size, args.in_channels, args.classes, seed=args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, pin_memory=cuda)
    barrier = pipe_barrier(args.ready_fd, args.go_fd) if args.ready_fd is not None else None
    timer = _step_timer(args.warmup, barrier, cuda)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        precision=args.precision,
        max_steps=total,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic="warn" if args.deterministic == "warn" else False,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    if len(timer.times) != args.steps + 1:
        raise SystemExit(f"timed {len(timer.times) - 1} steps instead of {args.steps}")
    record = dict(
        device=device_name(torch.device(args.device), per_run=True),
        batch=args.batch,
        steps=args.steps,
        warmup_end=timer.times[0],
        end=timer.times[-1],
        times=timer.times,
    )
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------------- parent


def _tail(handle, lines: int = 20) -> str:
    handle.seek(0)
    return "\n".join(handle.read().decode(errors="replace").splitlines()[-lines:])


def _worker_command(args: argparse.Namespace, index: int, ready_fd: int, go_fd: int) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--ready-fd", str(ready_fd)]
    command += ["--go-fd", str(go_fd), "--seed", str(index), "--device", args.device, "--model", args.model]
    command += ["--precision", args.precision, "--batch", str(args.batch), "--size", str(args.size)]
    command += ["--classes", str(args.classes), "--in-channels", str(args.in_channels)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--deterministic", args.deterministic]
    if args.base_channels is not None:
        command += ["--base-channels", str(args.base_channels)]
    return command


def run_pack(k: int, args: argparse.Namespace) -> dict:
    """Start k workers at once, release them together after their warm-up, and collect their results.

    Returns ``{"records": [...]}`` (one per worker), or ``{"error": message}`` when a worker failed.
    """
    slots = local_slots([str(args.gpu)], k, 1) if args.device == "cuda" else local_slots([], 1, k)
    procs, outs, errs, ready, go = [], [], [], {}, []
    for index, env in enumerate(slots):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        outs.append(tempfile.TemporaryFile())
        errs.append(tempfile.TemporaryFile())
        procs.append(
            subprocess.Popen(
                _worker_command(args, index, ready_w, go_r),
                env={**os.environ, **env, PARENT_PID_VARIABLE: str(os.getpid())},
                stdin=subprocess.DEVNULL,
                stdout=outs[-1],
                stderr=errs[-1],
                pass_fds=(ready_w, go_r),
            )
        )
        os.close(ready_w)
        os.close(go_r)
        ready[ready_r] = index
        go.append(go_w)

    failed: dict[int, str] = {}
    stopped: set[int] = set()  # terminated by this function
    deadline = time.monotonic() + args.timeout
    try:
        while ready and not failed:  # the barrier: every worker reports warm, or one dies (EOF on its pipe)
            readable, _, _ = select.select(list(ready), [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                failed.update({i: f"not warm after {args.timeout} s" for i in ready.values()})
                break
            for fd in readable:
                index = ready.pop(fd)
                if os.read(fd, 1) != b"r":
                    failed[index] = "exited during start-up or warm-up"
                os.close(fd)
        if failed:  # stop the others: a partial pack measures nothing
            for index, proc in enumerate(procs):
                if proc.poll() is None:
                    stopped.add(index)
                    proc.terminate()
        else:
            for fd in go:
                os.write(fd, b"g")
        for index, proc in enumerate(procs):
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                failed[index] = f"not finished after {args.timeout} s"
                proc.terminate()
                proc.wait()
    finally:
        for fd in list(ready) + go:
            os.close(fd)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()

    records = []
    for index, (proc, out, err) in enumerate(zip(procs, outs, errs, strict=True)):
        out.seek(0)
        lines = [line for line in out.read().decode(errors="replace").splitlines() if line.startswith(RESULT_PREFIX)]
        if index in stopped and index not in failed and proc.returncode == -signal.SIGTERM:
            failed[index] = "stopped because another worker failed"
            print(f"k={k}: worker {index} stopped because another worker failed", file=sys.stderr)
        elif proc.returncode != 0 or not lines:
            reason = failed.get(index) or f"exit code {proc.returncode}" + ("" if lines else ", no result")
            failed.setdefault(index, reason)
            print(f"k={k}: worker {index} failed ({reason}); stderr tail:\n{_tail(err)}\n", file=sys.stderr)
        else:
            records.append(json.loads(lines[-1].removeprefix(RESULT_PREFIX)))
        out.close()
        err.close()
    if failed:
        first = next(iter(failed))  # the first failure found, not one stopped because of it
        return {"error": f"worker {first} of {k}: {failed[first]}", "records": records}
    return {"records": records}


def model_label(args: argparse.Namespace) -> str:
    return args.model + ("" if args.base_channels is None else f" ({args.base_channels} base channels)")


def row(k: int, outcome: dict, baseline: float | None, args: argparse.Namespace) -> str:
    records = outcome.get("records") or []
    device = records[0]["device"] if records else args.device
    common = (
        f"| {args.date} | {device} | {torch.__version__} | {model_label(args)} | {args.precision} "
        f"| {args.batch} × {args.size}² | {k} |"
    )
    if "error" in outcome:
        return f"{common} failed: {outcome['error']} | | |"
    if outcome["throughput"]["error"]:
        return f"{common} invalid: {outcome['throughput']['error']} | | |"
    aggregate = outcome["throughput"]["aggregate"]
    ratio = f"{aggregate / baseline:.2f}×" if baseline else ""
    return f"{common} {aggregate:.1f} | {outcome['throughput']['per_run']:.1f} | {ratio} |"


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packs", nargs="+", type=int, default=[1, 2, 4, 8], help="runs per GPU to try")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu (smoke)")
    parser.add_argument("--gpu", default="0", help="the GPU's CUDA_VISIBLE_DEVICES index (default: %(default)s)")
    parser.add_argument("--model", default="unet", help="registry name (default: %(default)s)")
    parser.add_argument(
        "--base-channels",
        type=int,
        help=f"the U-Net's base_channels; default: the registry's on a GPU, {CPU_BASE_CHANNELS} on the CPU",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true", help="Trainer precision")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="square input side (default: %(default)s)")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per worker (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first, ≥ 1 (default: %(default)s)")
    parser.add_argument(
        "--deterministic",
        choices=("warn", "false"),
        default="warn",
        help="Trainer(deterministic=...); warn (default) as in configs/base.yaml",
    )
    parser.add_argument(
        "--min-overlap",
        type=float,
        default=MIN_OVERLAP,
        help="a row is invalid when the window all workers share is shorter than this fraction of their median "
        "timed span (default: %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per k (default: %(default)s)")
    add_report_arguments(parser)
    # internal: the worker processes
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--go-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be ≥ 1")
    if any(k < 1 for k in args.packs):
        parser.error("--packs must be ≥ 1")
    if args.base_channels is None and args.device == "cpu" and not args.worker and args.model == "unet":
        args.base_channels = CPU_BASE_CHANNELS
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu for a smoke check")

    rows, baseline, bad = [], None, False
    print(HEADER, flush=True)
    for k in sorted(set(args.packs)):
        outcome = run_pack(k, args)
        if "error" not in outcome:
            outcome["throughput"] = packed_throughput(
                [r["times"] for r in outcome["records"]], args.batch, args.min_overlap
            )
            if k == 1 and not outcome["throughput"]["error"]:
                baseline = outcome["throughput"]["aggregate"]
        bad |= "error" in outcome or bool(outcome["throughput"]["error"])
        rows.append(row(k, outcome, baseline, args))
        print(rows[-1], flush=True)

    if args.output is not None:
        append_table(args.output, HEADER, rows)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
