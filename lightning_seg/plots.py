"""Local comparison plots from the CSV logs, the offline equivalent of the W&B dashboard (docs/dashboards.md).

``python -m lightning_seg.plots compare RUNS_ROOT --out DIR`` reads the ``logs/version_*/metrics.csv`` of every
run folder under ``RUNS_ROOT`` (:func:`lightning_seg.run.find_run_folders`; its keys from its ``run.json``) and
writes one figure per dataset/model/fraction group, ``DIR/<data>_<model>_frac<f>.png``: per training step
``train/p_bar``, ``train/dice_coef``, ``train/alpha``, ``train/ce``, ``train/dice_loss``, and ``val/miou`` per
epoch, one line per loss (one colour per loss, the same in every figure). Runs of the same loss and settings in
a group (folds, seeds) are averaged, with a ± 1 std band; runs of other settings get a line of their own,
labelled with their cell (:attr:`lightning_seg.run.RunIdentity.cell`).
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .run import RunKeys, find_run_folders

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


def find_runs(root: str | Path) -> list[tuple[RunKeys, str, list[Path]]]:
    """``(keys, cell, [metrics.csv of each log version, oldest first])`` of each run folder under ``root`` that has logs."""
    runs = []
    for folder in find_run_folders(root):
        found = []
        for path in folder.path.glob("logs/version_*/metrics.csv"):
            match = re.fullmatch(r"version_(\d+)", path.parent.name)
            if match is not None:
                found.append((int(match[1]), path))
        identity = folder.identity()
        if found and identity is not None:
            runs.append((identity.keys, identity.cell, [path for _, path in sorted(found)]))
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
    losses = sorted({keys.loss for keys, _, _ in runs})
    cmap = colormaps["tab10" if len(losses) <= 10 else "tab20"]
    colours = {loss: cmap(i % cmap.N) for i, loss in enumerate(losses)}
    cells = defaultdict(set)
    for keys, cell, _ in runs:
        cells[(keys.group, keys.loss)].add(cell)
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for keys, cell, csvs in runs:
        line = keys.loss if len(cells[(keys.group, keys.loss)]) == 1 else f"{keys.loss} [{cell}]"
        groups[keys.group][line].append(read_metrics(csvs))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for group, by_loss in sorted(groups.items()):
        fig = Figure(figsize=(14, 7.5))
        axes = fig.subplots(2, 3)
        for ax, (metric, x_col) in zip(axes.flat, PANELS, strict=True):
            for line, loss_runs in sorted(by_loss.items()):
                series = [r[metric] for r in loss_runs if metric in r]
                if not series:
                    continue
                xs, mean, std = _mean_std(series)
                colour = colours[line.split(" [")[0]]
                label = line if len(series) == 1 else f"{line} (n={len(series)})"
                ax.plot(xs, mean, color=colour, label=label, marker="o" if len(xs) < 5 else None)
                if len(series) > 1:
                    ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2)
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
