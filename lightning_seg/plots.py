"""Local comparison plots from the CSV logs, the offline equivalent of the W&B dashboard (docs/dashboards.md).

``python -m lightning_seg.plots compare RUNS_ROOT --out DIR`` reads the ``logs/version_*/metrics.csv`` of every
run folder under ``RUNS_ROOT`` (:func:`lightning_seg.run.find_run_folders`; its keys from its ``run.json``) and
writes one figure per dataset/model/fraction group, ``DIR/<data>_<model>_frac<f>.png``: per training step
``train/p_bar``, ``train/dice_coef``, ``train/alpha``, ``train/ce``, ``train/dice_loss``, and ``val/miou`` at
each validation, one line per loss (one colour per loss, the same in every figure). Runs of the same loss and settings in
a group (folds, seeds) are averaged, with a ± 1 std band; runs of other settings get a line of their own,
labelled with their cell (:attr:`lightning_seg.run.RunIdentity.cell`).

Where the runs were tested, a second figure per group, ``DIR/<data>_<model>_frac<f>_test.png``, shows the
distributions of the per-image test scores (Dice, HD95, NSD, clDice; one box and its points per loss and
class, pooled over images × runs, from each run's per-image record) and the top-label ECE of each run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .evaluation.records import read_per_image
from .run import Records, RunKeys, find_run_folders

#: (metric, x column) of the panels, in order.
PANELS: list[tuple[str, str]] = [
    ("train/p_bar", "step"),
    ("train/dice_coef", "step"),
    ("train/alpha", "step"),
    ("train/ce", "step"),
    ("train/dice_loss", "step"),
    ("val/miou", "step"),
]
#: (score, axis label) of the per-image panels of the test figure, in order.
TEST_PANELS: list[tuple[str, str]] = [
    ("dice", "Dice per image"),
    ("hd95", "HD95 per image (pixels)"),
    ("nsd", "NSD per image"),
    ("cldice", "clDice per image"),
]


def read_metrics(paths: str | Path | Sequence[str | Path]) -> dict[str, dict[int, float]]:
    """``{metric: {x: value}}`` of one Lightning ``metrics.csv`` or several read in order (a resumed run goes on
    in ``logs/version_1``, …; later values win). x = the step for every panel (validations are counted in steps)."""
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


def compare(root: str | Path, out: str | Path, losses: Sequence[str] | None = None) -> list[Path]:
    """Write one PNG per dataset/model/fraction group of the runs under ``root`` (of the loss labels ``losses``
    only, if given); return their paths.

    Raises:
        FileNotFoundError: no run with logs under ``root`` (of those losses).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no backend is chosen or changed (safe in notebooks)

    runs = [run for run in find_runs(root) if losses is None or run[0].loss in losses]
    if not runs:
        which = f" of the losses {', '.join(losses)}" if losses else ""
        raise FileNotFoundError(f"no run{which} with logs/version_*/metrics.csv under {root}")
    labels = sorted({keys.loss for keys, _, _ in runs})
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    colours = {loss: cmap(i % cmap.N) for i, loss in enumerate(labels)}
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
    run_dirs: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for keys, _, csvs in runs:
        run_dirs[keys.group][keys.loss].append(csvs[0].parents[2])  # <run>/logs/version_N/metrics.csv
    for group, by_loss in sorted(run_dirs.items()):
        path = test_figure(group, by_loss, colours, out / (group.replace("/", "_") + "_test.png"))
        if path is not None:
            paths.append(path)
    return paths


def test_figure(group: str, run_dirs: dict[str, list[Path]], colours: dict, path: Path) -> Path | None:
    """Box and strip plots of the per-image scores of each loss's runs, and their ECE; ``None`` if no run of
    the group has per-image scores."""
    from matplotlib.figure import Figure

    rows = {
        loss: [
            row
            for run in dirs
            if (run / Records.PER_IMAGE).is_file()
            for row in read_per_image(run / Records.PER_IMAGE)
        ]
        for loss, dirs in sorted(run_dirs.items())
    }
    rows = {loss: found for loss, found in rows.items() if found}
    if not rows:
        return None
    ece = {
        loss: [
            value
            for run in dirs
            if (run / Records.EVALUATION).is_file()
            and (value := json.loads((run / Records.EVALUATION).read_text())["calibration"]["ece"]) is not None
        ]
        for loss, dirs in sorted(run_dirs.items())
    }
    classes = list(dict.fromkeys(row["class"] for found in rows.values() for row in found))
    panels = [(s, label) for s, label in TEST_PANELS if any(not math.isnan(r[s]) for f in rows.values() for r in f)]
    fig = Figure(figsize=(15, 8))
    grid = fig.subplots(2, 3)
    axes = list(grid.flat)[: len(panels) + 1]
    for unused in list(grid.flat)[len(panels) + 1 :]:
        unused.set_axis_off()
    width = 0.8 / len(rows)
    rng = np.random.default_rng(0)  # jitter of the points: the same figure every time
    for ax, (score, label) in zip(axes, panels, strict=False):
        shown = [
            c for c in classes if any(not math.isnan(r[score]) for f in rows.values() for r in f if r["class"] == c)
        ]
        for k, (loss, found) in enumerate(rows.items()):
            for x, name in enumerate(shown):
                values = [r[score] for r in found if r["class"] == name and not math.isnan(r[score])]
                if not values:
                    continue
                position = x - 0.4 + width * (k + 0.5)
                ax.boxplot(
                    values,
                    positions=[position],
                    widths=0.8 * width,
                    showfliers=False,
                    patch_artist=True,
                    boxprops={"facecolor": colours[loss], "alpha": 0.35},
                    medianprops={"color": colours[loss]},
                )
                jitter = rng.uniform(-0.3, 0.3, len(values)) * width
                ax.scatter(
                    position + jitter, values, s=8, color=colours[loss], alpha=0.8, label=loss if x == 0 else None
                )
        ax.set_xticks(range(len(shown)), shown, rotation=20)
        ax.set(title=label, xlim=(-0.5, len(shown) - 0.5))
        ax.grid(alpha=0.3, axis="y")
    ece_ax = axes[-1]
    for k, (loss, values) in enumerate(ece.items()):
        if values:
            ece_ax.scatter([k] * len(values), values, color=colours[loss], label=loss)
            ece_ax.hlines(np.mean(values), k - 0.3, k + 0.3, color=colours[loss])
    ece_ax.set_xticks(range(len(ece)), list(ece), rotation=20)
    ece_ax.set(title="ECE per run (top label; line: mean)")
    ece_ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    fig.suptitle(f"{group}: per-image test scores, images × runs pooled (empty-class policy: docs/evaluation.md)")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    return path


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m lightning_seg.plots", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "compare", help="per dataset/model/fraction: training curves (one line per loss) and per-image test scores"
    )
    c.add_argument("root", help="runs root, e.g. runs/")
    c.add_argument("--out", required=True)
    c.add_argument("--loss", action="append", help="only the runs of this loss label (repeatable)")
    args = parser.parse_args(argv)
    try:
        paths = compare(args.root, args.out, args.loss)
    except FileNotFoundError as error:
        parser.exit(2, f"python -m lightning_seg.plots: error: {error}\n")
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
