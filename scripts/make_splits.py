"""Write the committed 5-fold splits, ``lightning_seg/data/splits/{drosophila,covid19,chase}.json``.

The image keys come from the committed checksum manifests (``lightning_seg/data/checksums``), so no data is
needed; :func:`lightning_seg.data.make_folds` with a fixed seed makes the output the same on every run.
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
import re
import sys
import tempfile
from pathlib import Path

from lightning_seg.data.datasets import SPLIT_DIR, child_of
from lightning_seg.data.download import read_manifest
from lightning_seg.data.splits import check_folds, make_folds, save_folds

SEED = 0
NUM_FOLDS = 5

#: dataset -> (regex over manifest paths giving the image key, validation images per fold, grouping, description)
SPEC = {
    "drosophila": (
        r"^drosophila/images/(\d{2})\.tif$",
        4,
        lambda key: f"sections{4 * (int(key) // 4):02d}-{4 * (int(key) // 4) + 3:02d}",
        "one id per section image; group = block of 4 consecutive sections",
    ),
    "covid19": (r"^covid19/images/tr_im_(\d{4})\.png$", 10, None, "one id per CT slice; no patient ids published"),
    "chase": (r"^chase/images/(Image_\d{2}[LR])\.jpg$", 6, child_of, "one id per eye image; group = child (Image_NN)"),
}


def build(dataset: str) -> tuple[list[dict], dict]:
    pattern, num_val, grouping, unit = SPEC[dataset]
    ids = sorted(m.group(1) for name in read_manifest(dataset) if (m := re.match(pattern, name)))
    groups = [grouping(i) for i in ids] if grouping else None
    folds = make_folds(ids, num_folds=NUM_FOLDS, num_val=num_val, groups=groups, seed=SEED)
    check_folds(folds, ids, groups)
    metadata = {
        "generator": "scripts/make_splits.py (lightning_seg.data.make_folds)",
        "seed": SEED,
        "num_val": num_val,
        "unit": unit,
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
    for dataset in SPEC:
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
