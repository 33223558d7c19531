"""``lightning-seg-demo``: CE, ML and CAML trained with equal settings, their test IoU per class side by side.

    lightning-seg-demo                      # configs/grids/demo.yaml, two runs at a time, into runs/grids/demo
    lightning-seg-demo --parallel 1 --out DIR --set trainer.max_steps=60

The runs are an ordinary grid (:mod:`lightning_seg.grid`): each has its own run folder and records, and running
the command again finds them done and prints the table again. The table and the figure read the runs' test
records (:class:`lightning_seg.run.Records`); the figure, ``<out>/demo.png``, shows the IoU per class of each loss
and its validation mIoU over training.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from .grid.execute import local_slots, run_local
from .grid.spec import Grid, GridError, Run
from .plots import read_metrics
from .run import Records, RunFolder

#: The grid the demo runs unless ``--grid`` names another.
DEMO_GRID = Path("configs") / "grids" / "demo.yaml"


def test_ious(runs: Sequence[Run], out: Path) -> dict[str, dict[str, float]]:
    """``{loss label: {class or "mIoU": test IoU in %}}`` from each run's test record, in the grid's order.

    Raises:
        FileNotFoundError: a run has no test record (it failed or was never tested).
    """
    table = {}
    for run in runs:
        folder = RunFolder(out / run.relpath)
        record = folder.read(Records.TEST_METRICS)
        if record is None:
            raise FileNotFoundError(f"{folder.record_path(Records.TEST_METRICS)} is missing: the run was not tested")
        metrics = record["metrics"]
        ious = {name.removeprefix("test/iou_"): v for name, v in metrics.items() if name.startswith("test/iou_")}
        table[run.keys["loss"]] = {**{k: 100 * v for k, v in ious.items()}, "mIoU": 100 * metrics["test/miou"]}
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per class (then mIoU), one column per loss; the best value of a row in bold."""
    losses = list(table)
    rows = list(dict.fromkeys(name for ious in table.values() for name in ious if name != "mIoU")) + ["mIoU"]
    lines = ["| test IoU (%) | " + " | ".join(losses) + " |", "|---|" + "---:|" * len(losses)]
    for row in rows:
        values = [table[loss].get(row, math.nan) for loss in losses]
        best = max((v for v in values if not math.isnan(v)), default=None)
        cells = ["–" if math.isnan(v) else (f"**{v:.1f}**" if v == best else f"{v:.1f}") for v in values]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(runs: Sequence[Run], out: Path, table: dict[str, dict[str, float]]) -> Path:
    """``<out>/demo.png``: grouped bars of the test IoU per class and loss; validation mIoU over the steps."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no backend is chosen or changed

    fig = Figure(figsize=(12, 4.2))
    bars, curves = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    colours = colormaps["tab10"]
    classes = [name for name in next(iter(table.values())) if name != "mIoU"] + ["mIoU"]
    width = 0.8 / len(table)
    for k, (loss, ious) in enumerate(table.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(classes))]
        bars.bar(xs, [ious.get(c, 0.0) for c in classes], width, label=loss, color=colours(k))
    bars.set_xticks(range(len(classes)), classes)
    bars.set(ylabel="test IoU (%)", ylim=(0, 100), title="test IoU per class")
    bars.grid(alpha=0.3, axis="y")
    bars.legend(frameon=False)
    for k, run in enumerate(runs):
        logs = sorted((out / run.relpath).glob("logs/version_*/metrics.csv"))
        series = read_metrics(logs).get("val/miou", {}) if logs else {}
        steps = sorted(series)
        curves.plot(steps, [100 * series[s] for s in steps], marker="o", ms=3, color=colours(k), label=run.keys["loss"])
    curves.set(xlabel="training step", ylabel="validation mIoU (%)", title="model selection: validation mIoU")
    curves.grid(alpha=0.3)
    keys = runs[0].keys
    fig.suptitle(f"{keys['dataset']}, {keys['model']}, fold {keys['fold']}, seed {keys['seed']}: equal settings")
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=100)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightning-seg-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=Path, default=DEMO_GRID, help=f"grid file (default {DEMO_GRID})")
    p.add_argument("--out", type=Path, default=Path("runs") / "grids" / "demo", help="output root")
    p.add_argument("--parallel", type=int, default=2, help="runs at a time on the CPU (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if not args.grid.is_file():
            raise FileNotFoundError(
                f"--grid {args.grid}: no such file (run from the repository root, or name the grid)"
            )
        if args.parallel < 1:
            raise ValueError(f"--parallel must be at least 1, got {args.parallel}")
        runs = Grid.load(args.grid).runs(args.set)
        out = args.out.resolve()
        print(
            f"training {', '.join(run.keys['loss'] for run in runs)} into {out}, {args.parallel} at a time", flush=True
        )
        report = run_local(runs, out, local_slots([], 1, args.parallel))
        if not report.ok:
            print(report.summary(), file=sys.stderr)
            return 1
        table = test_ious(runs, out)
        for run in runs:
            print(f"{run.keys['loss']:>5}: {out / run.relpath}")
        print()
        print(format_table(table))
        print(f"\nwrote {figure(runs, out, table)}")
    except (GridError, ValueError, FileNotFoundError) as error:
        print(f"lightning-seg-demo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
