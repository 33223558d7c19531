"""Cost of the per-image evaluation at test time, against the test forward pass it follows.

For a dataset's fold-0 test split, times in the same process:

* ``forward``: the U-Net's (``--base-channels`` 16) forward pass over the test images in batches of 4, in
  eval mode without gradients, on the CPU: the work every test does anyway;
* ``evaluation``: :class:`lightning_seg.evaluation.TestEvaluation` over the same batches (Dice, IoU, HD95,
  NSD, clDice for the curvilinear classes, the calibration histogram).

Untrained networks predict nearly constant maps, which are cheap to score, so the evaluation is fed the
targets corrupted the way a weak model errs: shifted by one pixel and with 2 % of the pixels relabelled at
random (many small false structures: many boundary pixels). Each part runs ``--repeats`` times; the table gives
the median seconds per split and the ratio evaluation / forward.

Examples::

    python benchmarks/evaluation.py --datasets chase covid19 drosophila   # the real data ($LIGHTNING_SEG_DATA)
    python benchmarks/evaluation.py --datasets synthetic --repeats 1      # smoke check, no files needed
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # models.py beside it, also when loaded by file path

from models import add_report_arguments  # noqa: E402

from lightning_seg.data import ChaseDataModule, Covid19DataModule, DrosophilaDataModule, SyntheticDataModule  # noqa: E402
from lightning_seg.evaluation import TestEvaluation  # noqa: E402
from lightning_seg.models import build_model  # noqa: E402

DATASETS = {
    "synthetic": SyntheticDataModule,
    "chase": ChaseDataModule,
    "covid19": Covid19DataModule,
    "drosophila": DrosophilaDataModule,
}
HEADER = (
    "| date | device | dataset | test images | size | forward (s) | evaluation (s) | evaluation / forward |\n"
    "|---|---|---|---:|---|---:|---:|---:|"
)


def corrupt(target: torch.Tensor, num_classes: int, ignore_index: int, generator: torch.Generator) -> torch.Tensor:
    """The target shifted one pixel right with 2 % of its pixels relabelled at random (ignored pixels kept)."""
    pred = torch.roll(target, 1, dims=-1)
    noise = torch.rand(pred.shape, generator=generator) < 0.02
    pred = torch.where(noise, torch.randint(0, num_classes, pred.shape, generator=generator), pred)
    return torch.where(pred == ignore_index, 0, pred)


def measure(name: str, repeats: int, base_channels: int) -> dict:
    datamodule = DATASETS[name](batch_size=4, num_workers=0)
    datamodule.setup("test")
    batches = list(datamodule.test_dataloader())
    model = build_model("unet", datamodule.in_channels, datamodule.num_classes, base_channels=base_channels).eval()
    generator = torch.Generator().manual_seed(0)
    logits = []
    for batch in batches:
        pred = corrupt(batch["mask"], datamodule.num_classes, datamodule.ignore_index, generator)
        logits.append(torch.nn.functional.one_hot(pred, datamodule.num_classes).movedim(-1, 1).float() * 4)

    def forward() -> None:
        with torch.no_grad():
            for batch in batches:
                model(batch["image"])

    def evaluation() -> None:
        evaluation = TestEvaluation(datamodule.class_names, datamodule.curvilinear_classes, datamodule.ignore_index)
        for batch, batch_logits in zip(batches, logits, strict=True):
            evaluation.update(batch_logits, batch["mask"], batch["id"], datamodule.sample_group)

    times = {}
    for label, work in (("forward", forward), ("evaluation", evaluation)):
        durations = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            durations.append(time.perf_counter() - start)
        times[label] = statistics.median(durations)
    height, width = batches[0]["mask"].shape[-2:]
    return {"images": sum(len(b["mask"]) for b in batches), "size": f"{height}×{width}", **times}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["chase", "covid19", "drosophila"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-channels", type=int, default=16)
    add_report_arguments(parser, output=False)
    args = parser.parse_args(argv)
    device = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    print(HEADER)
    for name in args.datasets:
        r = measure(name, args.repeats, args.base_channels)
        ratio = r["evaluation"] / r["forward"]
        print(
            f"| {args.date} | {device} | {name} | {r['images']} | {r['size']} | {r['forward']:.2f} "
            f"| {r['evaluation']:.2f} | {ratio:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
