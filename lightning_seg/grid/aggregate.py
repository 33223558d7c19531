"""Aggregating a grid: mean ± std over folds and seeds, beside the paper's numbers, with paired Wilcoxon tests.

Reads the ``result.json`` of every run folder under a grid's output root (or of the given run folders) and writes:

- ``summary.csv``: one row per (dataset, model, fraction, loss, metric): n, mean, std, the paper's mean and std;
- ``wilcoxon.csv``: ML and CAML (the candidates) against every other loss of the same (dataset, model,
  fraction): the number of (fold, seed) pairs, the mean paired difference and the two-sided Wilcoxon
  signed-rank p-value on test mIoU;
- ``results.md``: both, in the layout of the paper's Tables 1-4, one table per dataset.

IoU is in percent, as in the paper. ``std`` is the sample standard deviation (ddof = 1) over runs. The runs
averaged in one row must share their settings but for fold and seed (their ``cell``,
:attr:`lightning_seg.run.RunIdentity.cell`); runs of other settings under the same keys are an error, never mixed.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from ..atomic import write_text_atomic
from ..run import Records, RunFolder, find_run_folders, group_name, settings_diff

PAPER_TABLES = Path(__file__).with_name("paper_tables.csv")
CANDIDATES = ("ml", "caml")
#: Row orders of the paper's tables; names not listed follow, sorted.
DATASET_ORDER = ("covid19", "chase", "drosophila")
MODEL_ORDER = ("unet", "transunet", "convformer_unet")
LOSS_ORDER = ("ce", "dice", "additive", "ml", "caml", "caml_fixed_r")

Group = tuple[str, str, float, str]  # dataset, model, fraction, loss


def _rank(value: str, order: Sequence[str]) -> tuple:
    for index, name in enumerate(order):
        if value == name:
            return (index, "")
    for index, name in reversed(list(enumerate(order))):  # additive_0.3 after additive, by its suffix
        if value.startswith(name + "_"):
            return (index, value)
    return (len(order), value)


def group_order(group: Group) -> tuple:
    dataset, model, fraction, loss = group
    return (_rank(dataset, DATASET_ORDER), _rank(model, MODEL_ORDER), -fraction, _rank(loss, LOSS_ORDER))


def collect(root: Path, folders: Iterable[Path] | None = None) -> list[dict]:
    """The results of the run folders under ``root`` (or of ``folders``), in a stable order; each record gets
    the key ``folder`` (its run folder) beside what ``result.json`` holds. Folders without a result are skipped."""
    results = []
    for folder in [RunFolder(f) for f in sorted(folders)] if folders is not None else find_run_folders(root):
        record = folder.read(Records.RESULT)
        if record is None:
            continue
        if "keys" not in record or "metrics" not in record:
            raise ValueError(f"{folder.record_path(Records.RESULT)} is not a grid result (no 'keys' or 'metrics')")
        results.append({**record, "folder": str(folder.path)})
    return results


def check_cells(results: Sequence[dict]) -> None:
    """Raise ``ValueError`` when one (dataset, model, fraction, loss) holds runs of different settings."""
    cells: dict[Group, dict[str | None, dict]] = defaultdict(dict)
    for record in results:
        cells[_group(record)].setdefault(record.get("cell"), record)
    for group, by_cell in cells.items():
        if len(by_cell) > 1:
            first, second = list(by_cell.values())[:2]
            a, b = (RunFolder(r["folder"]).identity() for r in (first, second))
            diff = settings_diff(a.settings, b.settings) if a and b else "unknown settings"
            raise ValueError(
                f"{group_name(*group[:3])}/{group[3]} holds runs of {len(by_cell)} different settings ({diff}; e.g. "
                f"{first['folder']} and {second['folder']}): aggregate one setting at a time with "
                "`lightning-seg-grid run GRID --aggregate` (same --set), or give each setting its own --out"
            )


def _group(record: dict) -> Group:
    keys = record["keys"]
    return keys["dataset"], keys["model"], float(keys["fraction"]), keys["loss"]


def _percent(value) -> float:
    return math.nan if value is None else 100.0 * float(value)


def metric_names(results: Iterable[dict]) -> list[str]:
    """``miou`` then ``iou_<class>`` in logging order, as they appear in the results."""
    names = ["miou"]
    for record in results:
        for key in record["metrics"]:
            name = key.removeprefix("test/")
            if name.startswith("iou_") and name not in names:
                names.append(name)
    return names


@dataclass
class Summary:
    group: Group
    n: int
    values: dict[str, list[float]]  # metric -> one value per run (NaN where the class was absent)

    def mean_std(self, metric: str) -> tuple[float, float]:
        values = [v for v in self.values.get(metric, []) if not math.isnan(v)]
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(results: Sequence[dict]) -> list[Summary]:
    """Per (dataset, model, fraction, loss): each metric over the runs (folds × seeds), in the paper's order."""
    by_group: dict[Group, list[dict]] = defaultdict(list)
    for record in results:
        by_group[_group(record)].append(record)
    summaries = []
    for group in sorted(by_group, key=group_order):
        records = by_group[group]
        names = metric_names(records)
        values = {name: [_percent(r["metrics"].get(f"test/{name}")) for r in records] for name in names}
        summaries.append(Summary(group, len(records), values))
    return summaries


def paired_tests(results: Sequence[dict], candidates: Sequence[str] = CANDIDATES) -> list[dict]:
    """Each candidate loss against each other loss of its (dataset, model, fraction), on test mIoU.

    Runs are paired by (fold, seed). ``p_value`` is the two-sided Wilcoxon signed-rank test (exact for small
    samples, zero differences dropped); NaN when fewer than one pair differs.
    """
    miou: dict[tuple, dict[tuple[int, int], float]] = defaultdict(dict)
    for record in results:
        value = record["metrics"].get("test/miou")
        if value is not None:
            miou[_group(record)][(record["keys"]["fold"], record["keys"]["seed"])] = 100.0 * value
    rows = []
    for group in sorted(miou, key=group_order):
        dataset, model, fraction, loss = group
        if loss not in candidates:
            continue
        baselines = [g for g in miou if g[:3] == group[:3] and g[3] not in candidates]
        for baseline in sorted(baselines, key=group_order):
            pairs = sorted(set(miou[group]) & set(miou[baseline]))
            diffs = [miou[group][p] - miou[baseline][p] for p in pairs]
            statistic = p_value = math.nan
            if any(d != 0 for d in diffs):
                test = stats.wilcoxon(diffs, alternative="two-sided")
                statistic, p_value = float(test.statistic), float(test.pvalue)
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "fraction": fraction,
                    "loss": loss,
                    "baseline": baseline[3],
                    "n_pairs": len(pairs),
                    "mean_diff": statistics.fmean(diffs) if diffs else math.nan,
                    "statistic": statistic,
                    "p_value": p_value,
                }
            )
    return rows


def load_paper_tables(path: Path = PAPER_TABLES) -> dict[tuple, tuple[float, float]]:
    """The paper's Tables 1-4: ``(dataset, model, fraction, loss, metric) -> (mean, std)`` in percent."""
    with open(path, newline="") as handle:
        return {
            (row["dataset"], row["model"], float(row["fraction"]), row["loss"], row["metric"]): (
                float(row["mean"]),
                float(row["std"]),
            )
            for row in csv.DictReader(handle)
        }


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3g}"


def to_markdown(summaries: Sequence[Summary], tests: Sequence[dict], paper: dict) -> str:
    """One table per dataset: model, fraction, loss rows as in the paper, each followed by the paper's row."""
    lines = [
        "IoU in %, mean ± sample std over folds × seeds (n runs); *paper* rows: the paper's Tables 1-4.",
        "p: two-sided Wilcoxon signed-rank test of test mIoU against each baseline, paired by (fold, seed);",
        "with n pairs the smallest attainable p is 2/2^n (0.25 for 3 pairs, 6.1e-05 for 15).",
    ]
    p_text: dict[Group, str] = defaultdict(str)
    for row in tests:
        group = (row["dataset"], row["model"], row["fraction"], row["loss"])
        entry = f"{row['baseline']} {_p(row['p_value'])} ({row['mean_diff']:+.2f})"
        p_text[group] = f"{p_text[group]}; {entry}" if p_text[group] else entry
    by_dataset: dict[str, list[Summary]] = defaultdict(list)
    for summary in summaries:
        by_dataset[summary.group[0]].append(summary)
    for dataset, rows in by_dataset.items():
        metrics = list(dict.fromkeys(m for row in rows for m in row.values))  # miou first, then the classes
        header = ["model", "fraction", "loss", "n", "mIoU", *(m.removeprefix("iou_") for m in metrics[1:])]
        lines += ["", f"## {dataset}", "", "| " + " | ".join([*header, "p vs baseline (Δ mIoU)"]) + " |"]
        lines.append("|" + " --- |" * (len(header) + 1))
        for row in rows:
            _, model, fraction, loss = row.group
            cells = [model, f"{fraction:g}", loss, str(row.n), *(_cell(*row.mean_std(m)) for m in metrics)]
            lines.append("| " + " | ".join([*cells, p_text.get(row.group, "")]) + " |")
            ours = [paper.get((*row.group, m)) for m in metrics]
            if any(ours):
                paper_cells = ["", "", "*paper*", "", *(f"*{_cell(*v)}*" if v else "" for v in ours), ""]
                lines.append("| " + " | ".join(paper_cells) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def aggregate(
    root: Path, out: Path | None = None, paper_tables: Path | None = PAPER_TABLES, folders: Iterable[Path] | None = None
) -> dict[str, Path]:
    """Aggregate the results under ``root`` (only those of ``folders`` if given) into ``out`` (default ``root``);
    return the files written."""
    results = collect(root, folders)
    if not results:
        raise FileNotFoundError(f"no {Records.RESULT} under {root}: run the grid first (lightning-seg-grid run …)")
    check_cells(results)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    paper = load_paper_tables(paper_tables) if paper_tables else {}
    summaries = summarize(results)
    tests = paired_tests(results)
    summary_rows = []
    for summary in summaries:
        dataset, model, fraction, loss = summary.group
        for metric in summary.values:
            mean, std = summary.mean_std(metric)
            paper_mean, paper_std = paper.get((*summary.group, metric), (math.nan, math.nan))
            summary_rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "fraction": fraction,
                    "loss": loss,
                    "metric": metric,
                    "n": summary.n,
                    "mean": mean,
                    "std": std,
                    "paper_mean": paper_mean,
                    "paper_std": paper_std,
                }
            )
    files = {"summary": out / "summary.csv", "wilcoxon": out / "wilcoxon.csv", "markdown": out / "results.md"}
    _write_csv(files["summary"], summary_rows)
    _write_csv(files["wilcoxon"], tests)
    write_text_atomic(files["markdown"], to_markdown(summaries, tests, paper))
    return files
