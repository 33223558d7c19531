"""Write the committed 5-fold splits, ``lightning_seg/data/splits/{drosophila,covid19,chase}.json``.

Each dataset's record (``lightning_seg/data/datasets/<name>.py``) gives the image keys (from its committed
checksum manifest, so no data is needed), the grouping and the validation size;
:func:`lightning_seg.data.make_folds` with a fixed seed makes the output the same on every run.
``--check`` only verifies that the committed files equal what this script writes (exit status 1 if not).

Per fold (images; see docs/datasets.md for how they map to the paper's counts):

* drosophila: 12 train / 4 val / 4 test (the DataModule turns them into 48 crops / 64 / 64 tiles), grouped
              in blocks of 4 consecutive sections: neighbouring sections of the stack are near-duplicates
              (pixel correlation ≈ 0.44 against ≈ 0.06 for non-adjacent pairs), so a test set is one block
* covid19:    70 train / 10 val / 20 test (slices; no patient ids are published, so no grouping)
* chase:      16 train / 6 val / 6 test, and 18 / 6 / 4 in the fold whose test set has 2 children;
              grouped by child (both eyes together)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from lightning_seg.data.datasets import DATASETS
from lightning_seg.data.splits import SPLIT_DIR, check_folds, make_folds, save_folds

SEED = 0
NUM_FOLDS = 5


def build(dataset: str) -> tuple[list[dict], dict]:
    """The folds of ``dataset`` and the split file's metadata, from its record (keys, grouping, validation size)."""
    info = DATASETS[dataset].info
    ids = info.keys()
    groups = [info.group(i) for i in ids] if info.group else None
    folds = make_folds(ids, num_folds=NUM_FOLDS, num_val=info.num_val, groups=groups, seed=SEED)
    check_folds(folds, ids, groups)
    metadata = {
        "generator": "scripts/make_splits.py (lightning_seg.data.make_folds)",
        "seed": SEED,
        "num_val": info.num_val,
        "unit": info.split_unit,
        "ids": ids,
    }
    if groups is not None:
        metadata["groups"] = dict(zip(ids, groups, strict=True))
    return folds, metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SPLIT_DIR)
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for dataset in DATASETS:
        folds, metadata = build(dataset)
        target = args.out / f"{dataset}.json"
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                save_folds(Path(tmp) / "x.json", folds, dataset, **metadata)
                fresh = json.loads((Path(tmp) / "x.json").read_text())
            if not target.is_file() or json.loads(target.read_text()) != fresh:
                stale.append(str(target))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            save_folds(target, folds, dataset, **metadata)
        sizes = ", ".join("/".join(str(len(f[s])) for s in ("train", "val", "test")) for f in folds)
        print(f"{dataset}: train/val/test per fold {sizes}")
    if stale:
        print("out of date:", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
