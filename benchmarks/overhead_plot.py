"""Draw ``overhead.py``'s records: what a real fit costs beyond a plain loop, against the length of the step.

Reads the JSON lines that ``overhead.py --records FILE`` appends (one per dataset and invocation) and draws two
panels against the plain loop's step (CPU ms, lower decile; log scale), one line per dataset and machine, points in
order of the step:

* **per step**: the Lightning run's step over the plain loop's, minus 1 (``module overhead``, solid), and bare
  Lightning's (dotted), with the target of 15 %;
* **outside steps**: the share of the training phase's wall time outside training steps, for the Lightning run
  (solid), bare Lightning (dotted) and the plain loop (dashed), with the target of 10 %.

Each point is the median over a record's repeats, as in ``overhead.py``'s table (the same functions compute both).
A sweep of step lengths is several ``overhead.py`` invocations into one records file, e.g. the model's width::

    for c in 8 32 128; do
      python benchmarks/overhead.py --model-kwargs "{\\"channels\\": $c}" --records /tmp/overhead.jsonl
    done
    python benchmarks/overhead_plot.py /tmp/overhead.jsonl --output overhead-steps.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py beside it, also when loaded by file path

from overhead import median_record, shares  # noqa: E402

#: targets of the overhead issue: module overhead per step, share of training time outside steps
TARGETS = {"per step": 0.15, "outside steps": 0.10}
#: where the step axis (log scale) may have ticks, in ms
TICKS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: what each panel draws: (key of :func:`overhead.shares`, label, line style)
SERIES = {
    "per step": [("module", "Lightning run", "-"), ("bare", "bare Lightning", ":")],
    "outside steps": [
        ("outside", "Lightning run", "-"),
        ("bare_outside", "bare Lightning", ":"),
        ("plain_outside", "plain loop", "--"),
    ],
}


class RecordError(ValueError):
    """A records file that cannot be drawn: the message names the file and the line."""


def read_records(path: Path) -> list[dict]:
    """The records of ``path``, each with its point: ``step_ms`` (the plain loop's median over repeats) and the
    :func:`overhead.shares` of the medians.

    Raises:
        RecordError: the file is missing or empty, or a line is not a record of ``overhead.py``.
    """
    if not path.is_file():
        raise RecordError(f"{path}: no such file; give the file that overhead.py --records wrote")
    points = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            lightning, bare, plain = (median_record(record[k]) for k in ("lightning", "bare", "plain"))
            point = {"step_ms": plain["step_cpu_ms"], **shares(lightning, bare, plain)}
            points.append({**{k: record[k] for k in ("dataset", "machine", "model", "code")}, **point})
        except (json.JSONDecodeError, KeyError, TypeError, IndexError, ZeroDivisionError) as error:
            message = f"{path}:{number}: not a record of overhead.py --records ({type(error).__name__}: {error})"
            raise RecordError(message) from None
    if not points:
        raise RecordError(f"{path}: no records in it")
    return points


def plot(points: list[dict], output: Path) -> Path:
    """Write the two panels of ``points`` (:func:`read_records`) to ``output`` (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lines: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for point in points:
        lines[point["dataset"], point["machine"]].append(point)
    machines = sorted({p["machine"] for p in points})
    low, high = min(p["step_ms"] for p in points), max(p["step_ms"] for p in points)
    colours = dict(zip(sorted(lines), plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (panel, series) in zip(axes, SERIES.items(), strict=True):
        for key, line in lines.items():
            line.sort(key=lambda p: p["step_ms"])
            for name, _, style in series:
                steps, values = [p["step_ms"] for p in line], [100 * p[name] for p in line]
                ax.plot(steps, values, style, marker="o", markersize=4, color=colours[key])
        ax.axhline(100 * TARGETS[panel], color="black", linewidth=0.8)
        ax.annotate(f" target {TARGETS[panel]:.0%}", (0, 100 * TARGETS[panel]), xycoords=("axes fraction", "data"))
        ax.set_xscale("log")
        ax.set_xticks([t for t in TICKS_MS if low / 1.5 <= t <= high * 1.5])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.set_xlabel("plain loop's step (CPU ms, lower decile)")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("step's CPU time over the plain loop's (%)")
    axes[1].set_ylabel("training wall time outside steps (%)")
    code = {(p["code"]["commit"] or "no commit")[:7] + " modified" * bool(p["code"]["modified"]) for p in points}
    fig.suptitle(f"{'; '.join(machines)}; code {', '.join(sorted(code))}", fontsize=9)
    handles = [
        Line2D([], [], color=colour, marker="o", label=dataset if len(machines) == 1 else f"{dataset}, {machine}")
        for (dataset, machine), colour in colours.items()
    ]
    handles += [
        Line2D([], [], color="black", linestyle=style, label=label) for _, label, style in SERIES["outside steps"]
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", type=Path, help="the JSON lines of overhead.py --records")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    try:
        points = read_records(args.records)
    except RecordError as error:
        parser.exit(2, f"overhead_plot.py: error: {error}\n")
    print(plot(points, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
