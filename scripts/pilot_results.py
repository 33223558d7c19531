"""Write ``results/pilot-cpu/`` from the runs of ``configs/grids/pilot-cpu.yaml``.

    lightning-seg-grid run configs/grids/pilot-cpu.yaml --parallel 2          # the runs (LIGHTNING_SEG_DATA: the data)
    python scripts/pilot_results.py runs/grids/pilot-cpu --out results/pilot-cpu

Writes, from the run folders only (nothing is trained or tested here):

- ``results.md``, ``summary.csv``, ``wilcoxon.csv``, ``paired_images.csv``: ``lightning-seg-grid aggregate`` with the
  paper's U-Net rows beside the pilot's narrower U-Net (``--paper-model unet``);
- ``runs.csv``: every run with its fingerprint, steps, best validation step, test mIoU and wall time;
- ``curves/``: p̄, D, α, the loss parts and validation mIoU per step for the paper's five losses, per dataset;
  ``readings/``: the same for CAML's readings of p̄ on Drosophila 1/8; per-image test scores beside each;
- ``overlays/<dataset>.png``: test images, ground truth, CE's and CAML's predictions (seed 0);
- with ``--previous RUNS_CSV`` (the ``runs.csv`` of an earlier run of the grid): ``rerun.csv``, per cell the
  mean test mIoU then and now and the change, matched by dataset, loss and seed.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import yaml

from lightning_seg import plots
from lightning_seg.figures import overlay_figure
from lightning_seg.grid.aggregate import aggregate
from lightning_seg.run import Records, find_run_folders

PAPER_LOSSES = ("ce", "dice", "additive", "additive_lam=0.7", "ml", "caml")
READINGS = tuple(
    "caml" + (f"_{suffix}" if suffix else "")
    for suffix in (
        "",
        "alpha_grad=none",
        "pbar=all_classes",
        "alpha_grad=none_pbar=all_classes",
        "pbar=per_pixel",
        "alpha_grad=none_pbar=per_pixel",
        "pbar=max_class",
        "alpha_grad=none_pbar=max_class",
    )
)


def runs_table(root: Path, path: Path) -> None:
    rows = []
    for folder in find_run_folders(root):
        result, best = folder.read(Records.RESULT), folder.read(Records.BEST)
        if result is None:
            continue
        keys = result["keys"]
        rows.append(
            {
                **keys,
                "fingerprint": result["fingerprint"][:8],
                "steps": result.get("steps"),
                "best_step": best["step"] if best else "",
                "val_miou": round(100 * best["score"], 2) if best else "",
                "test_miou": round(100 * result["metrics"]["test/miou"], 2),
                "wall_s": result.get("wall_s"),
                "folder": str(folder.path.relative_to(root)),
            }
        )
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def rerun_table(previous: Path, current: Path, path: Path) -> None:
    """Per cell (dataset, loss) the mean test mIoU of ``previous`` and ``current`` runs.csv, same seeds."""

    def read(csv_path: Path) -> dict[tuple[str, str, str], float]:
        with csv_path.open() as handle:
            return {(r["dataset"], r["loss"], r["seed"]): float(r["test_miou"]) for r in csv.DictReader(handle)}

    before, after = read(previous), read(current)
    if before.keys() != after.keys():
        raise SystemExit(f"--previous {previous}: its runs are not those of {current} (dataset, loss, seed)")
    cells: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for key in sorted(before):
        cells.setdefault(key[:2], []).append((before[key], after[key]))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "loss", "n", "previous_miou", "miou", "change", "largest_run_change"])
        for (dataset, loss), pairs in cells.items():
            then, now = (sum(v) / len(v) for v in zip(*pairs, strict=True))
            largest = max((b - a for a, b in pairs), key=abs)
            writer.writerow(
                [dataset, loss, len(pairs), f"{then:.2f}", f"{now:.2f}", f"{now - then:+.2f}", f"{largest:+.2f}"]
            )


def overlays(root: Path, out: Path) -> None:
    """CE against CAML, seed 0, on the first test images of each dataset."""
    by_key = {}
    for folder in find_run_folders(root):
        identity = folder.identity()
        if identity is not None and identity.keys.seed == 0 and identity.keys.loss in ("ce", "caml"):
            by_key[identity.keys.dataset, identity.keys.loss] = folder
    for dataset in sorted({d for d, _ in by_key}):
        ce, caml = by_key[dataset, "ce"], by_key[dataset, "caml"]
        # the run's own config as fit saved it, less the options of `fit` itself (which checkpoint to resume)
        config = yaml.safe_load(sorted(ce.path.glob("logs/version_*/config.yaml"))[-1].read_text())
        for option in ("ckpt_path", "weights_only", "test_after_fit"):
            config.pop(option, None)
        (out / ".tmp").mkdir(parents=True, exist_ok=True)
        (out / ".tmp" / "config.yaml").write_text(yaml.safe_dump(config))
        ckpts = [f.resolve(f.read(Records.BEST)["path"]) for f in (ce, caml)]
        args = ["--config", str(out / ".tmp" / "config.yaml"), f"--trainer.default_root_dir={out / '.tmp'}"]
        written = overlay_figure(args, *ckpts, out / ".tmp", num_images=4)
        shutil.move(written, out / f"{dataset}.png")
        shutil.rmtree(out / ".tmp", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the grid's output root, e.g. runs/grids/pilot-cpu")
    parser.add_argument("--out", type=Path, default=Path("results/pilot-cpu"))
    parser.add_argument("--previous", type=Path, help="runs.csv of an earlier run of the grid: writes rerun.csv")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = aggregate(args.root, args.out, paper_model="unet")
    runs_table(args.root, args.out / "runs.csv")
    plots.compare(args.root, args.out / "curves", PAPER_LOSSES)
    for path in plots.compare(args.root, args.out / "readings", READINGS):
        if not path.name.startswith("drosophila_"):  # the readings ran on Drosophila; elsewhere CAML alone
            path.unlink()
    (args.out / "overlays").mkdir(exist_ok=True)
    overlays(args.root, args.out / "overlays")
    written = [*files.values(), args.out / "runs.csv"]
    if args.previous:
        rerun_table(args.previous, args.out / "runs.csv", args.out / "rerun.csv")
        written.append(args.out / "rerun.csv")
    print("\n".join(f"wrote {p}" for p in written))


if __name__ == "__main__":
    main()
