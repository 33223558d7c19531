"""What one training sample costs: the project's crop and flip against albumentations reseeded per sample.

A training item is: the decoded image's view (``load_sample``), the paper's augmentation (a random crop where the
dataset crops, a horizontal flip with probability ½), and the C×H×W float32 and H×W int64 tensors. Two ways:

* ``RandomCropFlip``: the project's (:class:`lightning_seg.data.base.RandomCropFlip`), the item
  ``dataset[(index, seed)]`` exactly as the training loader asks for it;
* ``albumentations``: ``A.Compose([A.RandomCrop, A.HorizontalFlip(p=0.5)])``, reseeded before each sample from
  torch's generator (``set_random_seed``; albumentations ≥ 1.4.21 has a generator of its own, which is what the
  project did before, so that ``seed_everything`` reached the draws), then the same tensor conversion.

Each ``--datasets`` entry is a data module at the paper's scale (Drosophila: 256² windows of the 1024² sections,
fresh random ones or the fixed patches with a flip; COVID-19 and CHASE: 224² crops of the 256² resized images).
After a warm-up, ``--repeats`` rounds time ``--items`` samples with each way, in alternating order; a row gives
the median µs per sample of each and the median per-round ratio albumentations / RandomCropFlip. ``synthetic``
needs no files (a smoke check).

Examples::

    python benchmarks/augmentation.py --data-dir ../shared/data
    python benchmarks/augmentation.py --datasets synthetic --repeats 2 --items 8     # smoke check
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

from models import add_report_arguments, device_name, report_table  # noqa: E402

from lightning_seg.data import (  # noqa: E402
    ChaseDataModule,
    Covid19DataModule,
    DrosophilaDataModule,
    SyntheticDataModule,
)
from lightning_seg.data.base import SEED_RANGE, as_item  # noqa: E402

#: name -> (data module, its arguments besides data_dir): the paper's scale
DATASETS = {
    "drosophila-fresh-crops": (DrosophilaDataModule, {"fixed_patches": False}),
    "drosophila-fixed-patches": (DrosophilaDataModule, {}),
    "covid19": (Covid19DataModule, {}),
    "chase": (ChaseDataModule, {}),
    "synthetic": (SyntheticDataModule, {"image_size": 64, "crop_size": 48}),
}
HEADER = (
    "| date | CPU | torch | dataset | sample (after the crop) | RandomCropFlip µs | albumentations µs "
    "| albumentations / RandomCropFlip (median) |\n|---|---|---|---|---|---:|---:|---:|"
)


def albumentations_item(dataset, compose, index: int) -> dict:
    """A training item as the project built it with albumentations: reseed, transform, convert."""
    image, mask = dataset.load(dataset.ids[index])
    compose.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    out = compose(image=image, mask=mask)
    return as_item(out["image"], out["mask"], dataset.ids[index])


def measure(name: str, args: argparse.Namespace) -> str:
    """The table row of one ``--datasets`` entry."""
    import albumentations as A  # the baseline only

    module, kwargs = DATASETS[name]
    if module is not SyntheticDataModule:
        kwargs = {"data_dir": args.data_dir, **kwargs}
    dm = module(**kwargs)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    size = dm.random_crop_size
    compose = A.Compose([*([A.RandomCrop(size, size)] if size else []), A.HorizontalFlip(p=0.5)])
    seeds = torch.randint(SEED_RANGE, (args.items,), generator=torch.Generator().manual_seed(0)).tolist()
    indices = [i % len(dataset) for i in range(args.items)]
    ways = {
        "RandomCropFlip": lambda: [dataset[(i, s)] for i, s in zip(indices, seeds, strict=True)],
        "albumentations": lambda: [albumentations_item(dataset, compose, i) for i in indices],
    }
    sample = ways["RandomCropFlip"]()[0]
    if ways["albumentations"]()[0]["image"].shape != sample["image"].shape:
        raise SystemExit(f"{name}: the two ways give samples of different shapes")
    times: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(args.repeats):
        for way in list(ways)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            ways[way]()
            times[way].append((time.perf_counter() - start) / args.items)
    ours, theirs = times["RandomCropFlip"], times["albumentations"]
    ratio = statistics.median(b / a for a, b in zip(ours, theirs, strict=True))
    return (
        f"| {args.date} | {device_name(torch.device('cpu'))} | {torch.__version__} | {name} "
        f"| {'×'.join(map(str, sample['image'].shape))} | {1e6 * statistics.median(ours):.0f} "
        f"| {1e6 * statistics.median(theirs):.0f} | {ratio:.1f}× |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=[n for n in DATASETS if n != "synthetic"], choices=DATASETS)
    parser.add_argument("--data-dir", default=None, help="the folder holding drosophila/, covid19/, chase/")
    parser.add_argument("--items", type=int, default=200, help="samples per round and way")
    parser.add_argument("--repeats", type=int, default=15)
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.items < 1:
        parser.error("--repeats and --items must be ≥ 1")
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        rows.append(measure(name, args))
        print(rows[-1], flush=True)
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
