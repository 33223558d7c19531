"""The class map of a batch of logits: ``torch.argmax(dim=1)`` against ``max(dim=1).indices``.

:func:`lightning_seg.prediction.predicted_classes` turns every training, validation and test batch's logits into
classes (the metrics, the per-image evaluation, the overlays). Both candidates return the same indices (the
first class on ties; tests/test_prediction.py); this measures what each costs, on float32 standard-normal logits
of each ``--shapes`` entry (N×C×H×W). After ``--warmup`` untimed calls each, ``--repeats`` rounds time both, in
alternating order; a row gives the medians and the median per-round ratio argmax / max.indices.

Examples::

    python benchmarks/prediction.py                          # this machine's CPU, one thread
    python benchmarks/prediction.py --device cuda --threads 0
    python benchmarks/prediction.py --repeats 3 --shapes 4x2x16x16   # smoke check
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import add_report_arguments, device_name, report_table, synchronize  # noqa: E402

from lightning_seg.prediction import predicted_classes  # noqa: E402

CANDIDATES = {"torch.argmax(dim=1)": lambda x: x.argmax(dim=1), "max(dim=1).indices": predicted_classes}
HEADER = (
    "| date | device | torch | logits | argmax ms | max.indices ms | argmax / max.indices (median) |\n"
    "|---|---|---|---|---:|---:|---:|"
)


def shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"a shape is N×C×H×W written NxCxHxW, e.g. 4x5x256x256; got {text!r}")
    return dims


def time_once(fn, logits: torch.Tensor, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn(logits)
    synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", type=shape, nargs="+", default=[(4, 2, 28, 28), (4, 5, 256, 256), (4, 2, 224, 224)])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0: torch's default")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be ≥ 1 and --warmup ≥ 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for dims in args.shapes:
        logits = torch.randn(dims, generator=torch.Generator().manual_seed(0)).to(device)
        expected = logits.argmax(dim=1)
        if not torch.equal(predicted_classes(logits), expected):
            raise SystemExit(f"max(dim=1).indices differs from argmax on {dims}")
        times = {name: [] for name in CANDIDATES}
        for fn in CANDIDATES.values():
            for _ in range(args.warmup):
                time_once(fn, logits, device)
        for r in range(args.repeats):
            for name in list(CANDIDATES)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(time_once(CANDIDATES[name], logits, device))
        argmax, indices = times["torch.argmax(dim=1)"], times["max(dim=1).indices"]
        ratio = statistics.median(a / b for a, b in zip(argmax, indices, strict=True))
        rows.append(
            f"| {args.date} | {device_name(device)} | {torch.__version__} | {'×'.join(map(str, dims))} "
            f"| {1e3 * statistics.median(argmax):.3f} | {1e3 * statistics.median(indices):.3f} | {ratio:.1f}× |"
        )
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
