"""Draw ``overhead.py``'s records: what a real fit costs beyond a plain loop, against the length of the step.

Reads the JSON lines that ``overhead.py --records FILE`` appends (one per dataset and invocation) and draws two
panels against the plain loop's step (CPU ms, lower decile; log scale), one line per dataset and machine, its points
in order of the step and labelled with their model (the records of a line must share the options of
:data:`SHARED_OPTIONS`: the same loss, step budget, overrides and threads):

* **per step**: the Lightning run's step over the plain loop's, minus 1 (``module overhead``, solid), and bare
  Lightning's (dotted), with the target (``overhead.TARGETS``, 15 %);
* **outside steps**: the share of the training phase's wall time outside training steps, for the Lightning run
  (solid), bare Lightning (dotted) and the plain loop (dashed), with the target (10 %).

Each point is the median over a record's repeats, as in ``overhead.py``'s table (the same functions compute both).
A sweep of step lengths is several ``overhead.py`` invocations into one records file, e.g. the model's width::

    for c in 8 32 128; do
      python benchmarks/overhead.py --model-kwargs "{\\"channels\\": $c}" --records /tmp/overhead.jsonl
    done
    python benchmarks/overhead_plot.py /tmp/overhead.jsonl --output overhead-steps.png
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # overhead.py beside it, also when loaded by file path

from overhead import TARGETS, build_parser, median_record, shares  # noqa: E402

from lightning_seg.figures import save_png  # noqa: E402

#: the options of ``overhead.py`` that the points of one line must share: the rest say which datasets ran, where
#: the data and the outputs lie, and what a sweep changes (``--model``, ``--model-kwargs``, ``--scale``)
SHARED_OPTIONS = ("loss", "max_steps", "val_check_interval", "set", "threads")
#: where the step axis (log scale) may have ticks, in ms
TICKS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: the files ``--output`` may name (matplotlib writes each by its suffix)
FORMATS = (".png", ".pdf", ".svg")
#: the panels: title, :data:`overhead.TARGETS` key, y label, and the series drawn (:func:`overhead.shares` key,
#: label, line style, marker)
PANELS = (
    (
        "per step",
        "module",
        "step's CPU time over the plain loop's (%)",
        (("module", "Lightning run", "-", "o"), ("bare", "bare Lightning", ":", "s")),
    ),
    (
        "outside steps",
        "outside",
        "training wall time outside steps (%)",
        (
            ("outside", "Lightning run", "-", "o"),
            ("bare_outside", "bare Lightning", ":", "s"),
            ("plain_outside", "plain loop", "--", "^"),
        ),
    ),
)


class RecordError(ValueError):
    """A records file that cannot be drawn: the message names the file and the line."""


def command_settings(command: list[str]) -> dict:
    """The :data:`SHARED_OPTIONS` of an ``overhead.py`` command line (``sys.argv`` as a record holds it).

    Raises:
        ValueError: ``overhead.py``'s parser refuses the command.
    """
    with contextlib.redirect_stderr(io.StringIO()) as refused:
        try:
            args = build_parser().parse_args(command[1:])
        except SystemExit:
            raise ValueError(
                f"its command is not overhead.py's: {refused.getvalue().strip().splitlines()[-1]}"
            ) from None
    return {name: getattr(args, name) for name in SHARED_OPTIONS}


def _point(record: dict) -> dict:
    lightning, bare, plain = (median_record(record[k]) for k in ("lightning", "bare", "plain"))
    fields = {k: record[k] for k in ("dataset", "machine", "model")}
    if not all(isinstance(v, str) for v in fields.values()):
        raise TypeError(f"dataset, machine and model must be strings, got {fields}")
    code = record["code"]
    if not (isinstance(code["commit"], str | None) and isinstance(code["modified"], bool | None)):
        raise TypeError(f"code must hold a commit (a string or null) and modified (true, false or null), got {code}")
    settings = command_settings(record["command"])
    return {
        **fields,
        "code": code,
        "settings": settings,
        "step_ms": plain["step_cpu_ms"],
        **shares(lightning, bare, plain),
    }


def read_records(path: Path) -> list[dict]:
    """The points of the records in ``path``: each record's dataset, machine, model, code and settings
    (:func:`command_settings`), ``step_ms`` (the plain loop's step, median over repeats) and the :func:`overhead.shares`
    of the medians.

    Raises:
        RecordError: ``path`` is not a readable text file, holds no record or a line that is not a record of
            ``overhead.py``, or two records of one dataset and machine differ in a :data:`SHARED_OPTIONS` option.
    """
    if not path.is_file():
        raise RecordError(
            f"{path}: {'a folder' if path.is_dir() else 'no such file'}; give the file of overhead.py --records"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"{path}: not a text file ({error}); give the file of overhead.py --records") from None
    points, line_settings = [], {}  # (dataset, machine) -> the settings of its first record
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise RecordError(
                f"{where}: not JSON (a Markdown table of --output?); give the file of --records"
            ) from None
        try:
            points.append(_point(record))
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as error:
            raise RecordError(
                f"{where}: not a record of overhead.py --records ({type(error).__name__}: {error})"
            ) from None
        point = points[-1]
        first = line_settings.setdefault((point["dataset"], point["machine"]), point["settings"])
        if first != point["settings"]:
            differ = [k for k in SHARED_OPTIONS if first[k] != point["settings"][k]]
            raise RecordError(
                f"{where}: {point['dataset']} on this machine ran with other {', '.join(differ)} than in an earlier"
                " line; one line of the plot compares one setting: draw them from separate files"
            )
    if not points:
        raise RecordError(f"{path}: no records in it; write them with overhead.py --records {path}")
    return points


def model_labels(models: list[str]) -> tuple[list[str], str]:
    """What tells the points' ``models`` apart, and the whole with that part as ``…``: the labels of
    ``tiny(channels=8), ÷8`` and ``tiny(channels=32), ÷8`` are ``8`` and ``32``, the whole ``tiny(channels=…), ÷8``.

    Example:
        >>> model_labels(["tiny(channels=8), ÷8", "tiny(channels=32), ÷8"])
        (['8', '32'], 'tiny(channels=…), ÷8')
    """
    prefix = os.path.commonprefix(models)
    suffix = os.path.commonprefix([m[len(prefix) :][::-1] for m in models])[::-1]
    labels = [m[len(prefix) : len(m) - len(suffix)] for m in models]
    return labels, prefix + ("…" if any(labels) else "") + suffix


def _code_label(code: dict) -> str:
    modified = {True: " modified", False: "", None: " (modified?)"}[code["modified"]]
    return (code["commit"] or "no commit")[:7] + modified


def figure(points: list[dict]):
    """The two panels of ``points`` (:func:`read_records`): a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lines: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for point in points:
        lines[point["dataset"], point["machine"]].append(point)
    machines = sorted({p["machine"] for p in points})
    palette = plt.get_cmap("tab10").colors
    colours = {key: palette[i % len(palette)] for i, key in enumerate(sorted(lines))}
    steps = [p["step_ms"] for p in points]
    ticks = [t for t in TICKS_MS if min(steps) / 1.5 <= t <= max(steps) * 1.5]
    labels, models = model_labels([p["model"] for p in points])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, (title, target, ylabel, series) in zip(axes, PANELS, strict=True):
        for key, line in lines.items():
            line.sort(key=lambda p: p["step_ms"])
            for name, _, style, marker in series:
                ax.plot(
                    [p["step_ms"] for p in line],
                    [100 * p[name] for p in line],
                    style,
                    marker=marker,
                    color=colours[key],
                )
        for point, label in zip(points, labels, strict=True):  # which model each step length is
            ax.annotate(label, (point["step_ms"], 100 * point[series[0][0]]), fontsize=7, alpha=0.8)
        ax.axhline(100 * TARGETS[target], color="black", linewidth=0.8)
        ax.annotate(f" target {TARGETS[target]:.0%}", (0, 100 * TARGETS[target]), xycoords=("axes fraction", "data"))
        ax.set_xscale("log")
        if ticks:
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.xaxis.set_major_locator(LogLocator())
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.set_xlabel("plain loop's step (CPU ms, lower decile)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    code = sorted({_code_label(p["code"]) for p in points})
    title = f"{machines[0]}; " if len(machines) == 1 else ""
    fig.suptitle(f"{title}code {', '.join(code)}; points: {models}", fontsize=9)
    handles = [
        Line2D([], [], color=colour, marker="o", label=dataset if len(machines) == 1 else f"{dataset}, {machine}")
        for (dataset, machine), colour in colours.items()
    ]
    handles += [Line2D([], [], color="black", linestyle=s, marker=m, label=label) for _, label, s, m in PANELS[1][3]]
    columns = 3 if len(machines) == 1 else 2
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.025 * (1 + -(-len(handles) // columns)), 1, 0.95))
    return fig


def plot(points: list[dict], output: Path) -> Path:
    """Write the :func:`figure` of ``points`` to ``output`` (its suffix one of :data:`FORMATS`) and return its path."""
    import matplotlib.pyplot as plt

    fig = figure(points)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".png":
        save_png(fig, output)  # 64 colours: a quarter of the size, for a committed file
    else:
        fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", type=Path, help="the JSON lines of overhead.py --records")
    parser.add_argument("--output", type=Path, required=True, help=f"the figure to write ({', '.join(FORMATS)})")
    args = parser.parse_args(argv)
    if args.output.suffix not in FORMATS:
        parser.error(f"--output {args.output}: give a file ending in {', '.join(FORMATS)}")
    try:
        points = read_records(args.records)
    except RecordError as error:
        parser.exit(2, f"overhead_plot.py: error: {error}\n")
    print(plot(points, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
