"""Local comparison plots from the CSV logs, the offline equivalent of the W&B dashboard (docs/dashboards.md).

``python -m lightning_seg.plots compare RUNS_ROOT --out DIR`` reads every run's ``logs/version_*/metrics.csv``
under ``RUNS_ROOT`` (the latest version of each run directory
``<data>/<model>/<loss>/fold<k>_frac<f>_seed<s>``) and writes one figure per dataset/model/fraction group,
``DIR/<data>_<model>_frac<f>.png``: per training step ``train/p_bar``, ``train/dice_coef``, ``train/alpha``,
``train/ce``, ``train/dice_loss``, and ``val/miou`` per epoch, one line per loss (one colour per loss, the
same in every figure). Runs of the same loss in a group (folds, seeds) are averaged, with a ± 1 std band.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .loggers import run_group, run_metadata

#: (metric, x column) of the panels, in order.
PANELS: list[tuple[str, str]] = [
    ("train/p_bar", "step"),
    ("train/dice_coef", "step"),
    ("train/alpha", "step"),
    ("train/ce", "step"),
    ("train/dice_loss", "step"),
    ("val/miou", "epoch"),
]


def read_metrics(paths: str | Path | Sequence[str | Path]) -> dict[str, dict[int, float]]:
    """``{metric: {x: value}}`` of one Lightning ``metrics.csv`` or several read in order (a resumed run goes on
    in ``logs/version_1``, …; later values win). x = step for ``train/*`` panels, epoch for the rest."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for path in [paths] if isinstance(paths, str | Path) else paths:
        with Path(path).open(newline="") as f:
            for row in csv.DictReader(f):
                for metric, x_col in PANELS:
                    value = row.get(metric)
                    if value not in (None, "") and row.get(x_col) not in (None, ""):
                        series[metric][int(float(row[x_col]))] = float(value)
    return dict(series)


def find_runs(root: str | Path) -> list[tuple[dict, list[Path]]]:
    """``(run_metadata, [metrics.csv of each log version, oldest first])`` for each run directory under ``root``."""
    versions: dict[Path, list[tuple[int, Path]]] = defaultdict(list)
    for path in Path(root).rglob("logs/version_*/metrics.csv"):
        match = re.fullmatch(r"version_(\d+)", path.parent.name)
        if match is not None:
            versions[path.parent.parent.parent].append((int(match[1]), path))
    runs = []
    for run_dir, found in sorted(versions.items()):
        try:
            runs.append((run_metadata(run_dir), [path for _, path in sorted(found)]))
        except ValueError:
            continue  # not a <data>/<model>/<loss>/fold<k>_frac<f>_seed<s> directory
    return runs


def _mean_std(runs: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    by_x: dict[int, list[float]] = defaultdict(list)
    for series in runs:
        for x, v in series.items():
            by_x[x].append(v)
    xs = np.array(sorted(by_x))
    values = [np.asarray(by_x[x]) for x in xs]
    return xs, np.array([v.mean() for v in values]), np.array([v.std() for v in values])


def compare(root: str | Path, out: str | Path) -> list[Path]:
    """Write one PNG per dataset/model/fraction group of the runs under ``root``; return their paths."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no backend is chosen or changed (safe in notebooks)

    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no run with logs/version_*/metrics.csv under {root}")
    losses = sorted({meta["loss"] for meta, _ in runs})
    cmap = colormaps["tab10" if len(losses) <= 10 else "tab20"]
    colours = {loss: cmap(i % cmap.N) for i, loss in enumerate(losses)}
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for meta, csvs in runs:
        groups[run_group(meta)][meta["loss"]].append(read_metrics(csvs))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for group, by_loss in sorted(groups.items()):
        fig = Figure(figsize=(14, 7.5))
        axes = fig.subplots(2, 3)
        for ax, (metric, x_col) in zip(axes.flat, PANELS, strict=True):
            for loss, loss_runs in sorted(by_loss.items()):
                series = [r[metric] for r in loss_runs if metric in r]
                if not series:
                    continue
                xs, mean, std = _mean_std(series)
                label = loss if len(series) == 1 else f"{loss} (n={len(series)})"
                ax.plot(xs, mean, color=colours[loss], label=label, marker="o" if len(xs) < 5 else None)
                if len(series) > 1:
                    ax.fill_between(xs, mean - std, mean + std, color=colours[loss], alpha=0.2)
            ax.set(title=metric, xlabel=x_col)
            ax.grid(alpha=0.3)
        handles, labels = [], []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
        fig.suptitle(group)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        path = out / (group.replace("/", "_") + ".png")
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m lightning_seg.plots", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="one figure per dataset/model/fraction, one line per loss")
    c.add_argument("root", help="runs root, e.g. runs/")
    c.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    paths = compare(args.root, args.out)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
