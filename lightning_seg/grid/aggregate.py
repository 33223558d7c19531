"""Aggregating a grid: mean ± std over folds and seeds, beside the paper's numbers, with paired Wilcoxon tests.

Reads the ``result.json`` of every run folder under a grid's output root (or of the given run folders), and
the per-image scores each run's test wrote beside it (:mod:`lightning_seg.evaluation.records`), and writes:

- ``summary.csv``: one row per (dataset, model, fraction, loss, metric): n runs, mean, std, a bootstrap 95 %
  interval, the paper's mean and std. Run-level metrics (``miou``, ``iou_<class>``, ``ece``, ``ece_<class>``)
  are over runs (``level`` "run"); per-image metrics (``image_<score>`` over classes, ``image_<score>_<class>``)
  over images × runs (``level`` "image");
- ``wilcoxon.csv``: ML and CAML (the candidates) against every other loss of the same (dataset, model,
  fraction): the number of (fold, seed) pairs, the mean paired difference and the two-sided Wilcoxon
  signed-rank p-value on test mIoU, raw and Holm-adjusted;
- ``paired_images.csv``: the same comparisons per test image, for every per-image metric;
- ``results.md``: the paper's Tables 1-4 layout, one table per dataset, then calibration and per-image tables.

IoU, Dice, NSD, clDice and ECE are in percent, as in the paper; HD95 in pixels. ``std`` is the sample standard
deviation (ddof = 1). Intervals, tests and the multiple-comparison policy: :mod:`lightning_seg.grid.statistics`.
The runs averaged in one row must share their settings but for fold and seed (their ``cell``,
:attr:`lightning_seg.run.RunIdentity.cell`); runs of other settings under the same keys are an error, never mixed.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text_atomic
from ..evaluation.policy import SCORES
from ..run import Records, RunFolder, find_run_folders, group_name, settings_diff
from . import statistics as st

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


def calibration_names(results: Iterable[dict]) -> list[str]:
    """``ece`` then ``ece_<class>`` in logging order, as they appear in the results."""
    names: list[str] = []
    for record in results:
        names += [k.removeprefix("test/") for k in record["metrics"] if k.startswith("test/ece")]
    return sorted(set(names), key=names.index)


def summarize(results: Sequence[dict], names: Callable[[Sequence[dict]], list[str]] = metric_names) -> list[Summary]:
    """Per (dataset, model, fraction, loss): each metric of ``names`` over the runs (folds × seeds), in the
    paper's order."""
    by_group: dict[Group, list[dict]] = defaultdict(list)
    for record in results:
        by_group[_group(record)].append(record)
    summaries = []
    for group in sorted(by_group, key=group_order):
        records = by_group[group]
        values = {name: [_percent(r["metrics"].get(f"test/{name}")) for r in records] for name in names(records)}
        summaries.append(Summary(group, len(records), values))
    return summaries


def paired_tests(results: Sequence[dict], candidates: Sequence[str] = CANDIDATES) -> list[dict]:
    """Each candidate loss against each other loss of its (dataset, model, fraction), on test mIoU.

    Runs are paired by (fold, seed). ``p_value`` is the two-sided Wilcoxon signed-rank test (exact for small
    samples, zero differences dropped); NaN when fewer than one pair differs. ``p_holm``: Holm-adjusted over
    the tests of one dataset.
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
            statistic, p_value = st.wilcoxon(diffs)
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
    _add_holm(rows, family=lambda row: row["dataset"])
    return rows


def _add_holm(rows: list[dict], family) -> None:
    """Set ``p_holm`` of every row, Holm-adjusted within the rows that share ``family(row)``."""
    families: dict = defaultdict(list)
    for row in rows:
        families[family(row)].append(row)
    for members in families.values():
        for row, adjusted in zip(members, st.holm([r["p_value"] for r in members]), strict=True):
            row["p_holm"] = adjusted


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


def to_markdown(
    summaries: Sequence[Summary], tests: Sequence[dict], paper: dict, paper_model: str | None = None
) -> str:
    """One table per dataset: model, fraction, loss rows as in the paper, each followed by the paper's row
    (of ``paper_model`` when given, whatever the runs' model)."""
    source = "the paper's Tables 1-4" + (f", its {paper_model} rows beside every model" if paper_model else "")
    lines = [
        f"IoU in %, mean ± sample std over folds × seeds (n runs); *paper* rows: {source}.",
        "p: two-sided Wilcoxon signed-rank test of test mIoU against each baseline, paired by (fold, seed), raw / ",
        "Holm-adjusted over the tests of the dataset's table; with n pairs the smallest attainable p is 2/2^n",
        "(0.25 for 3 pairs, 6.1e-05 for 15).",
    ]
    p_text: dict[Group, str] = defaultdict(str)
    for row in tests:
        group = (row["dataset"], row["model"], row["fraction"], row["loss"])
        entry = f"{row['baseline']} {_p(row['p_value'])} / {_p(row['p_holm'])} ({row['mean_diff']:+.2f})"
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


SCORE_LABELS = {"dice": "Dice (%)", "iou": "IoU (%)", "hd95": "HD95 (pixels)", "nsd": "NSD (%)", "cldice": "clDice (%)"}


def image_statistics(results: Sequence[dict]) -> tuple[list[dict], list[dict], dict[str, dict]]:
    """Per-image metrics of every cell (:func:`lightning_seg.grid.statistics.describe`), the per-image paired
    tests of the candidates against the other losses of their (dataset, model, fraction), Holm-adjusted
    within each (dataset, score), and the evaluation settings of each dataset."""
    runs = [run for run in map(st.run_images, results) if run is not None]
    settings = st.check_settings(runs)
    by_group: dict[Group, list[st.RunImages]] = defaultdict(list)
    for run in runs:
        by_group[_group({"keys": run.keys})].append(run)
    rows, tests = [], []
    for group in sorted(by_group, key=group_order):
        group_runs = by_group[group]
        classes = list(dict.fromkeys(c for run in group_runs for c in run.classes))
        for score in SCORES:
            for class_name in [None, *classes]:
                metric = st.image_metric(score, class_name)
                described = st.describe(group_runs, metric)
                if not described["n_values"]:
                    continue
                keys = dict(zip(("dataset", "model", "fraction", "loss"), group, strict=True))
                rows.append(
                    {
                        **keys,
                        "metric": metric,
                        "score": score,
                        "class": class_name or "mean",
                        "n": len(group_runs),
                        **described,
                    }
                )
                if group[3] not in CANDIDATES:
                    continue
                for baseline in sorted(by_group, key=group_order):
                    if baseline[:3] != group[:3] or baseline[3] in CANDIDATES:
                        continue
                    differences = st.image_pairs(group_runs, by_group[baseline], metric)
                    statistic, p_value = st.wilcoxon(differences)
                    tests.append(
                        {
                            **keys,
                            "baseline": baseline[3],
                            "metric": metric,
                            "score": score,
                            "class": class_name or "mean",
                            "n_pairs": len(differences),
                            "mean_diff": statistics.fmean(differences) if differences else math.nan,
                            "statistic": statistic,
                            "p_value": p_value,
                        }
                    )
    _add_holm(tests, family=lambda row: (row["dataset"], row["score"]))
    return rows, tests, settings


def _interval(row: dict) -> str:
    text = _cell(row["mean"], row["std"])
    return text if math.isnan(row["ci_low"]) else f"{text} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def images_markdown(calibration: Sequence[Summary], rows: Sequence[dict], tests: Sequence[dict], settings: dict) -> str:
    """Per dataset: ECE per cell, each per-image score per cell and class, and the per-image paired tests."""
    lines: list[str] = []
    datasets = list(dict.fromkeys([s.group[0] for s in calibration] + [r["dataset"] for r in rows]))
    for dataset in datasets:
        lines += ["", f"## {dataset}: calibration and per-image scores"]
        cells = [s for s in calibration if s.group[0] == dataset]
        if cells:
            names = list(dict.fromkeys(m for s in cells for m in s.values))
            header = [
                "model",
                "fraction",
                "loss",
                "n",
                *(("top label" if m == "ece" else m.removeprefix("ece_")) for m in names),
            ]
            lines += ["", "ECE (%), top label and class-wise, mean ± std over runs [95 % bootstrap CI over runs]:", ""]
            lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            for s in cells:
                described = [
                    {"mean": m, "std": sd, "ci_low": lo, "ci_high": hi}
                    for m, sd, (lo, hi) in ((*s.mean_std(n), st.bootstrap_mean_ci(s.values[n])) for n in names)
                ]
                _, model, fraction, loss = s.group
                lines.append(
                    "| " + " | ".join([model, f"{fraction:g}", loss, str(s.n), *map(_interval, described)]) + " |"
                )
        ours = [r for r in rows if r["dataset"] == dataset]
        if not ours:
            continue
        tolerance = settings.get(dataset, {}).get("nsd_tolerance")
        lines += [
            "",
            "Per-image scores: mean ± sample std over images × runs [95 % bootstrap CI, images and runs resampled]; "
            f"NSD at τ = {tolerance:g} px; a class absent from an image's target and prediction leaves its mean.",
        ]
        for score in SCORES:
            score_rows = [r for r in ours if r["score"] == score]
            if not score_rows:
                continue
            classes = list(dict.fromkeys(r["class"] for r in score_rows))
            header = ["model", "fraction", "loss", "n", *classes]
            lines += [
                "",
                f"### {SCORE_LABELS[score]}",
                "",
                "| " + " | ".join(header) + " |",
                "|" + " --- |" * len(header),
            ]
            by_group: dict[tuple, dict[str, dict]] = defaultdict(dict)
            for r in score_rows:
                by_group[r["model"], r["fraction"], r["loss"]][r["class"]] = r
            for (model, fraction, loss), by_class in by_group.items():
                n = next(iter(by_class.values()))["n"]
                cells = [_interval(by_class[c]) if c in by_class else "–" for c in classes]
                lines.append("| " + " | ".join([model, f"{fraction:g}", loss, str(n), *cells]) + " |")
        paired = [t for t in tests if t["dataset"] == dataset]
        if paired:
            classes = list(dict.fromkeys(t["class"] for t in paired))
            header = ["model", "fraction", "loss", "baseline", "score", *classes]
            lines += [
                "",
                "### Paired per-image tests",
                "",
                "Δ = loss − baseline per test image (averaged over shared seeds), two-sided Wilcoxon p raw / "
                "Holm-adjusted within the dataset and score.",
                "",
                "| " + " | ".join(header) + " |",
                "|" + " --- |" * len(header),
            ]
            by_comparison: dict[tuple, dict[str, dict]] = defaultdict(dict)
            for t in paired:
                by_comparison[t["model"], t["fraction"], t["loss"], t["baseline"], t["score"]][t["class"]] = t
            for (model, fraction, loss, baseline, score), by_class in by_comparison.items():
                cells = [
                    f"{t['mean_diff']:+.2f} ({_p(t['p_value'])} / {_p(t['p_holm'])}, n={t['n_pairs']})" if t else "–"
                    for t in (by_class.get(c) for c in classes)
                ]
                lines.append("| " + " | ".join([model, f"{fraction:g}", loss, baseline, score, *cells]) + " |")
    return "\n".join(lines) + "\n" if lines else ""


def aggregate(
    root: Path,
    out: Path | None = None,
    paper_tables: Path | None = PAPER_TABLES,
    folders: Iterable[Path] | None = None,
    paper_model: str | None = None,
) -> dict[str, Path]:
    """Aggregate the results under ``root`` (only those of ``folders`` if given) into ``out`` (default ``root``);
    return the files written. ``paper_model`` (e.g. ``"unet"``) sets the paper's rows of that model beside the
    runs of every model, for runs of a variant the paper did not train (a narrower U-Net)."""
    results = collect(root, folders)
    if not results:
        raise FileNotFoundError(f"no {Records.RESULT} under {root}: run the grid first (lightning-seg-grid run …)")
    check_cells(results)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    paper = load_paper_tables(paper_tables) if paper_tables else {}
    if paper_model is not None:
        if paper and paper_model not in {key[1] for key in paper}:
            raise ValueError(
                f"--paper-model {paper_model}: the paper has no such model; it has {sorted({k[1] for k in paper})}"
            )
        models = {record["keys"]["model"] for record in results}
        paper = {(ds, m, *rest): v for (ds, model, *rest), v in paper.items() if model == paper_model for m in models}
    summaries = summarize(results)
    calibration = summarize(results, calibration_names)
    tests = paired_tests(results)
    image_rows, image_tests, settings = image_statistics(results)
    summary_rows = []
    for summary in [*summaries, *calibration]:
        dataset, model, fraction, loss = summary.group
        for metric in summary.values:
            mean, std = summary.mean_std(metric)
            low, high = st.bootstrap_mean_ci(summary.values[metric])
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
                    "ci_low": low,
                    "ci_high": high,
                    "level": "run",
                    "n_values": sum(not math.isnan(v) for v in summary.values[metric]),
                    "paper_mean": paper_mean,
                    "paper_std": paper_std,
                }
            )
    for row in image_rows:
        summary_rows.append(
            {
                **{k: row[k] for k in ("dataset", "model", "fraction", "loss", "metric", "n", "mean", "std")},
                "ci_low": row["ci_low"],
                "ci_high": row["ci_high"],
                "level": "image",
                "n_values": row["n_values"],
                "paper_mean": math.nan,
                "paper_std": math.nan,
            }
        )
    files = {
        "summary": out / "summary.csv",
        "wilcoxon": out / "wilcoxon.csv",
        "paired_images": out / "paired_images.csv",
        "markdown": out / "results.md",
    }
    _write_csv(files["summary"], summary_rows)
    _write_csv(files["wilcoxon"], tests)
    _write_csv(files["paired_images"], image_tests)
    markdown = to_markdown(summaries, tests, paper, paper_model) + images_markdown(
        calibration, image_rows, image_tests, settings
    )
    write_text_atomic(files["markdown"], markdown)
    return files
