"""Forward + backward time of the paper's losses against ``F.cross_entropy`` and MONAI's ``DiceCELoss``.

Every candidate gets the same float32 logits (``--batch``×``--classes``×``--size``×``--size``, standard normal
times 2) and the same integer targets (uniform over the classes; ``--ignore-frac`` of them set to 255, which
MONAI cannot ignore, so MONAI gets them as class 0). One measurement is ``loss = fn(logits, target);
loss.backward()`` from fresh ``logits.grad``, timed with ``time.perf_counter`` (the GPU synchronised before
and after).

After ``--warmup`` untimed calls of each candidate, ``--repeats`` rounds run every candidate once, in an order
rotated by one place per round (interleaved, so a burst of load from other processes hits every candidate
alike). Each round's time of a candidate is divided by that round's ``F.cross_entropy`` time; the table gives
the median milliseconds and the median of these per-round ratios, with its interquartile range.

Results are printed as a Markdown table, and appended to ``--output`` if given (the header is written when the
file is new). Each row carries the date, device, torch version and input shape.

Examples::

    python benchmarks/losses.py --device cpu                     # this machine
    python benchmarks/losses.py --device cuda --repeats 200      # on a GPU
    python benchmarks/losses.py --device cpu --repeats 3 --size 32 --warmup 1   # smoke check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import add_report_arguments, device_name, report_table, synchronize  # noqa: E402

from lightning_seg.losses import build_loss  # noqa: E402

IGNORE = 255
BASELINE = "F.cross_entropy"
#: The paper's losses (registry name, arguments), and CAML's other readings of p̄.
PAPER_LOSSES: list[tuple[str, dict]] = [
    ("ce", {}),
    ("dice", {}),
    ("additive", {"lam": 0.5}),
    ("ml", {}),
    ("caml", {}),
    ("caml_fixed_r", {"r": 2.0}),
    ("caml", {"pbar": "all_classes"}),
    ("caml", {"pbar": "per_pixel"}),
    ("caml", {"pbar": "max_class"}),
]
HEADER = (
    "| date | device | torch | logits | loss | ms (median) | × F.cross_entropy (median) | IQR of the ratio |\n"
    "|---|---|---|---|---|---:|---:|---|"
)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def label(name: str, kwargs: dict) -> str:
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")" if kwargs else "")


def candidates(ignore_index: int) -> dict[str, Loss | str]:
    """Name → loss function, or → the reason it cannot run here (e.g. an option this version lacks)."""
    out: dict[str, Loss | str] = {
        BASELINE: lambda x, t: F.cross_entropy(x, t, ignore_index=ignore_index),
    }
    try:
        from monai.losses import DiceCELoss

        # Batch Dice over all classes with softmax, as the paper's Dice; the mean of Dice and CE.
        monai = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        out["MONAI DiceCELoss(batch=True)"] = lambda x, t: monai(x, t.masked_fill(t == ignore_index, 0).unsqueeze(1))
    except ImportError as err:
        out["MONAI DiceCELoss(batch=True)"] = f"monai not importable: {err}"
    for name, kwargs in PAPER_LOSSES:
        try:
            out[label(name, kwargs)] = build_loss(name, ignore_index=ignore_index, **kwargs)
        except (TypeError, ValueError) as err:
            out[label(name, kwargs)] = f"{type(err).__name__}: {err}"
    return out


def make_inputs(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.classes, args.size, args.size)
    logits = (2.0 * torch.randn(shape, generator=g)).to(device).requires_grad_(True)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=g)
    target[torch.rand(target.shape, generator=g) < args.ignore_frac] = IGNORE
    return logits, target.to(device)


def time_once(fn: Loss, logits: torch.Tensor, target: torch.Tensor, device: torch.device) -> float:
    logits.grad = None
    synchronize(device)
    start = time.perf_counter()
    fn(logits, target).backward()
    synchronize(device)
    return time.perf_counter() - start


def measure(fns: dict[str, Loss], logits, target, args, device) -> dict[str, list[float]]:
    """Per candidate, the list of per-round times (seconds), rounds interleaved and rotated."""
    names = list(fns)
    for name in names:
        for _ in range(args.warmup):
            time_once(fns[name], logits, target, device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(fns[name], logits, target, device))
    return times


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--size", type=int, default=256, help="square image side (default: %(default)s)")
    parser.add_argument("--ignore-frac", type=float, default=0.0, help="fraction of pixels labelled 255")
    parser.add_argument("--repeats", type=int, default=30, help="interleaved timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls of each candidate first")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be ≥ 1 and --warmup ≥ 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    logits, target = make_inputs(args, device)
    everything = candidates(IGNORE)
    fns = {name: fn for name, fn in everything.items() if not isinstance(fn, str)}
    times = measure(fns, logits, target, args, device)
    base = times[BASELINE]
    shape = "×".join(str(s) for s in logits.shape) + f" {str(logits.dtype).removeprefix('torch.')}"
    common = f"| {args.date} | {device_name(device)} | {torch.__version__} | {shape} |"
    rows = []
    for name, fn in everything.items():
        if isinstance(fn, str):
            rows.append(f"{common} {name} | n/a | n/a | {fn} |")
            continue
        ratios = [t / b for t, b in zip(times[name], base, strict=True)]
        low, high = quartiles(ratios)
        rows.append(
            f"{common} {name} | {1e3 * statistics.median(times[name]):.2f} | {statistics.median(ratios):.2f}× "
            f"| {low:.2f}–{high:.2f} |"
        )
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
