"""Training-step speed and memory of the paper's architectures.

Times one forward + cross-entropy + backward pass (no optimiser step) of each model on a fixed random batch,
in three modes:

* ``eager``   — eager mode, fp32 weights and activations (PyTorch's default TF32 settings);
* ``bf16``    — eager mode under ``torch.autocast(dtype=torch.bfloat16)``;
* ``compile`` — ``torch.compile(model)`` under the same bf16 autocast.

For each (model, mode) it runs ``--warmup`` untimed steps (the first one compiles in ``compile`` mode; its
duration is reported as "first step"), then ``--steps`` timed steps, synchronising the GPU around each, and
reports the median milliseconds per step and the peak memory (GPU: ``torch.cuda.max_memory_allocated``
during that model+mode; CPU: the process's peak resident set size so far, which only grows).

On a CPU the script is a smoke check only: by default (``--variants auto``) it then uses the small test
variants of each model, and marks them "(small)" in the table.

Results are printed as a Markdown table, and appended to ``--output`` if given (the header is written when the
file is new). Each row carries the date, device name and torch version.

Examples::

    python benchmarks/models.py                                  # GPU, 256×256, batch 4, all models and modes
    python benchmarks/models.py --output benchmarks/results.md   # ... and append the rows to a file
    python benchmarks/models.py --device cpu --steps 2 --size 64 # CPU smoke check
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from lightning_seg.models import build_model  # noqa: E402
from lightning_seg.run import cpu_info  # noqa: E402

MODELS = ("unet", "transunet", "convformer_unet")
#: ``--variants small``: the test-size versions (same topology, a few hundred thousand parameters).
SMALL = {
    "unet": {"base_channels": 8},
    "transunet": {"variant": "tiny"},
    "convformer_unet": {"variant": "tiny"},
}
MODES = ("eager", "bf16", "compile")
HEADER = (
    "| date | device | torch | model | params (M) | mode | batch × size | ms/step (median) | first step (s) "
    "| peak memory (MiB) |\n|---|---|---|---|---:|---|---|---:|---:|---:|"
)


def device_name(device: torch.device, per_run: bool = False, threads: int | None = None) -> str:
    """The GPU's name, or the CPU's with its cores and the threads of torch (``threads``: of the runs the row
    measures, when they are other processes; default: this process's; ``per_run``: of each packed run)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = cpu_info()["processor"]
    threads = torch.get_num_threads() if threads is None else threads
    return f"CPU {name} ({os.cpu_count()} cores, {threads} thread{'' if threads == 1 else 's'}{' per run' * per_run})"


def add_report_arguments(parser: argparse.ArgumentParser, output: bool = True) -> None:
    """``--date``, written in every row, and (``output``) ``--output``, the Markdown file the rows are appended to."""
    if output:
        parser.add_argument("--output", type=Path, default=None, help="append the Markdown rows to this file")
    parser.add_argument("--date", default=dt.date.today().isoformat(), help="date written in the rows (default: today)")


def check_table_file(path: Path, header: str) -> bool:
    """Whether ``path`` is new (or empty); a long benchmark calls it before it starts, :func:`append_table` again.

    Raises:
        SystemExit: the file's last table has other columns than ``header``'s (or the file holds no table).
    """
    if not path.exists() or path.stat().st_size == 0:
        return True
    last = [line for line in path.read_text().splitlines() if line.startswith("| date |")][-1:]
    if last != [header.splitlines()[0]]:
        raise SystemExit(f"{path}: its last table has other columns than this one's; give a new --output file")
    return False


def append_table(path: Path, header: str, rows: list[str]) -> None:
    """Append Markdown ``rows`` to ``path``, with the table's ``header`` first when the file is new or empty.

    Raises:
        SystemExit: the file's last table has other columns (rows of another script, or of an older version of this
            one): appended there, the rows would sit under the wrong column names.
    """
    new = check_table_file(path, header)
    with path.open("a") as f:
        f.write((header + "\n" if new else "") + "\n".join(rows) + "\n")


def report_table(header: str, rows: list[str], output: Path | None) -> None:
    """Print the Markdown table (``header`` and ``rows``) and, with ``output``, append the rows to that file."""
    print(header)
    print("\n".join(rows), flush=True)
    if output is not None:
        append_table(output, header, rows)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def bench(name: str, mode: str, args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    kwargs = SMALL.get(name, {}) if args.variants == "small" else {}
    model = build_model(name, args.in_channels, args.classes, **kwargs).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    step_model = torch.compile(model, mode=args.compile_mode) if mode == "compile" else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if mode in ("bf16", "compile") else nullcontext()
    x = torch.randn(args.batch, args.in_channels, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), device=device)

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    first = step()
    for _ in range(args.warmup - 1):
        step()
    times = [step() for _ in range(args.steps)]
    result = dict(
        model=name,
        params=params,
        mode=mode,
        ms=1e3 * statistics.median(times),
        first=first,
        memory=peak_memory_mib(device),
    )
    if mode == "compile":
        torch._dynamo.reset()
    return result


def row(result: dict, args: argparse.Namespace, device: torch.device) -> str:
    model = result["model"] + (" (small)" if args.variants == "small" else "")
    common = f"| {args.date} | {device_name(device)} | {torch.__version__} | {model} |"
    if "error" in result:
        return f"{common} | {result['mode']} | {args.batch} × {args.size}² | failed: {result['error']} | | |"
    return (
        f"{common} {result['params'] / 1e6:.2f} | {result['mode']} | {args.batch} × {args.size}² "
        f"| {result['ms']:.1f} | {result['first']:.1f} | {result['memory']:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="registry names (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument(
        "--variants",
        choices=("auto", "default", "small"),
        default="auto",
        help="model sizes: the registry defaults, or the small test variants; auto (default) = default on a GPU, "
        "small on the CPU, where the full models in bf16 take minutes per step",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="square input side (default: %(default)s)")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="timed steps; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (≥ 1)")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default: %(default)s)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be ≥ 1")

    device = torch.device(args.device)
    if args.variants == "auto":
        args.variants = "default" if device.type == "cuda" else "small"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("CUDA is not available; use --device cpu for a smoke check")
        torch.backends.cudnn.benchmark = True  # fixed input size

    rows = []
    print(HEADER, flush=True)
    for name in args.models:
        for mode in args.modes:
            try:
                result = bench(name, mode, args, device)
            except Exception as err:  # report and go on with the other models and modes
                result = dict(model=name, mode=mode, error=f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")
                print(f"{name}/{mode} failed: {err!r}", file=sys.stderr)
            rows.append(row(result, args, device))
            print(rows[-1], flush=True)

    if args.output is not None:
        append_table(args.output, HEADER, rows)
    return 1 if any("failed:" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
