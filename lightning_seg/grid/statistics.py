"""Statistics of a grid: bootstrap confidence intervals, paired tests and their multiple-comparison correction,
and the per-image scores of every run gathered for them.

Conventions (docs/grids.md, "Statistics"):

- **Intervals** are percentile-bootstrap 95 % intervals of the mean, :data:`REPLICATES` replicates drawn from a
  generator seeded with :data:`SEED` (so an aggregate is reproducible). A run-level metric (test mIoU, a
  class's dataset-level IoU, ECE) resamples runs. A per-image score resamples **images × runs**: within each
  fold, the fold's runs (seeds) and its test images are drawn independently with replacement (a two-way
  bootstrap of a crossed design), and a replicate is the mean over the drawn (run, image) pairs of every
  fold. Images are drawn as whole ``sample_group``\\ s, so the 16 tiles of a Drosophila section go together.
- **Paired tests** are two-sided Wilcoxon signed-rank tests (scipy; exact for small samples without ties,
  zero differences dropped). Between runs, pairs are (fold, seed). Between images, a pair is one test image
  (``sample_group``) of one fold: its score averaged over the runs the two losses share and over the image's
  samples, one loss minus the other.
- **Multiple comparisons**: Holm's step-down correction (family-wise error) within each table: the run-level
  mIoU tests of one dataset form one family, and the per-image tests of one dataset and one score (all
  models, fractions, loss pairs and classes) another. Raw and adjusted p-values are both reported.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from ..evaluation.policy import SCORES
from ..evaluation.records import read_per_image
from ..run import Records

#: Bootstrap replicates, interval level and generator seed of every interval.
REPLICATES = 2000
LEVEL = 0.95
SEED = 0
#: Scores reported in pixels; the others are shares, reported in percent like IoU.
PIXEL_SCORES = ("hd95",)
#: Settings of the per-image evaluation that must agree between runs whose scores are pooled.
POOLED_SETTINGS = ("nsd_tolerance", "both_empty", "calibration_bins", "hd_percentile")


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaN replicates left out)."""
    replicates = np.asarray(replicates, dtype=float)
    replicates = replicates[~np.isnan(replicates)]
    if replicates.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_mean_ci(
    values: Sequence[float], replicates: int = REPLICATES, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of independent values (NaN left out); NaN for fewer than 2.

    Example:
        >>> bootstrap_mean_ci([1.0, 1.0, 1.0])
        (1.0, 1.0)
    """
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if values.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(replicates, values.size))
    return percentile_interval(values[draws].mean(axis=1), level)


@dataclass
class Block:
    """The per-image values of one fold: ``values[r, j]`` of run r and sample j (NaN: no value), and the
    resampling unit (image) of each sample as an index ``units[j]`` in ``0 … n_units-1``."""

    values: np.ndarray
    units: np.ndarray

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=float)
        self.units = np.asarray(self.units, dtype=int)
        if self.values.ndim != 2 or self.units.shape != self.values.shape[1:]:
            raise ValueError(
                f"need runs × samples values and one unit per sample, got {self.values.shape}, {self.units.shape}"
            )
        if self.units.size and sorted(set(self.units.tolist())) != list(range(self.units.max() + 1)):
            raise ValueError("units must number the images 0 … n-1")


def two_way_bootstrap_ci(
    blocks: Sequence[Block], replicates: int = REPLICATES, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float]:
    """Percentile interval of the mean over runs × images, resampling both (module docstring).

    In each replicate every block (fold) draws its runs and its units with replacement, independently; the
    replicate's mean is the sum of the drawn values over the number of drawn values that exist, pooled over
    blocks. NaN when there are fewer than two values in all.
    """
    blocks = [b for b in blocks if b.values.size]
    if sum(int(np.count_nonzero(~np.isnan(b.values))) for b in blocks) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    total = np.zeros(replicates)
    count = np.zeros(replicates)
    for block in blocks:
        runs, _ = block.values.shape
        n_units = int(block.units.max()) + 1
        run_weights = rng.multinomial(runs, np.full(runs, 1 / runs), size=replicates)
        sample_weights = rng.multinomial(n_units, np.full(n_units, 1 / n_units), size=replicates)[:, block.units]
        present = ~np.isnan(block.values)
        total += np.einsum("br,rs,bs->b", run_weights, np.where(present, block.values, 0.0), sample_weights)
        count += np.einsum("br,rs,bs->b", run_weights, present.astype(float), sample_weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return percentile_interval(total / count, level)


def wilcoxon(differences: Sequence[float]) -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank ``(statistic, p)`` of paired differences; NaN when none is non-zero."""
    differences = [d for d in differences if not math.isnan(d)]
    if not any(d != 0 for d in differences):
        return math.nan, math.nan
    test = stats.wilcoxon(differences, alternative="two-sided")
    return float(test.statistic), float(test.pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family (NaN entries stay NaN and are not counted).

    ``p_adj(i) = max_{j ≤ i} min(1, (m − j + 1) · p(j))`` for the p-values sorted ascending, m of them.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[i] = running
    return adjusted


# --- the per-image scores of a grid's runs -------------------------------------------------------------------


def image_metric(score: str, class_name: str | None = None) -> str:
    """Name of a per-image metric: ``image_<score>_<class>``, or ``image_<score>`` for the mean over classes."""
    return f"image_{score}" if class_name is None else f"image_{score}_{class_name}"


@dataclass
class RunImages:
    """The per-image scores of one run: ``values[metric][sample id]`` (only ids with a value) and each id's
    image (``units``). Scores are in percent, HD95 in pixels."""

    keys: dict
    run_dir: Path
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


def run_images(record: dict) -> RunImages | None:
    """Read the per-image file of the run ``record`` (a result with its ``folder``); ``None`` if it has none."""
    run_dir = Path(record["folder"])
    if not (run_dir / Records.PER_IMAGE).is_file():
        return None
    rows = read_per_image(run_dir / Records.PER_IMAGE)
    run = RunImages(record["keys"], run_dir)
    by_image: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        run.units[row["id"]] = row["sample_group"]
        if row["class"] not in run.classes:
            run.classes.append(row["class"])
        for score in SCORES:
            value = row[score]
            if math.isnan(value):
                continue
            value = value if score in PIXEL_SCORES else 100.0 * value
            run.values.setdefault(image_metric(score, row["class"]), {})[row["id"]] = value
            by_image[score, row["id"]].append(value)
    for (score, sample_id), values in by_image.items():
        run.values.setdefault(image_metric(score), {})[sample_id] = float(np.mean(values))
    return run


def check_settings(runs: Sequence[RunImages]) -> dict[str, dict]:
    """The evaluation settings of each dataset's runs (:data:`POOLED_SETTINGS`).

    Raises:
        ValueError: naming two runs of one dataset whose per-image scores were computed with different
            settings (NSD tolerance, empty-class policy, bins): their scores must not be pooled.
    """
    first: dict[str, tuple[dict, Path]] = {}
    for run in runs:
        path = run.run_dir / Records.EVALUATION
        if not path.is_file():
            continue
        settings = json.loads(path.read_text()).get("settings", {})
        chosen = {k: settings.get(k) for k in POOLED_SETTINGS}
        dataset = run.keys["dataset"]
        if dataset not in first:
            first[dataset] = (chosen, path)
        elif chosen != first[dataset][0]:
            raise ValueError(
                f"{path} and {first[dataset][1]} were evaluated with different settings "
                f"({chosen} vs {first[dataset][0]}); re-test the runs with one setting before aggregating"
            )
    return {dataset: chosen for dataset, (chosen, _) in first.items()}


def blocks(runs: Sequence[RunImages], metric: str) -> list[Block]:
    """One :class:`Block` per fold of ``runs`` (the runs of one cell) for ``metric``."""
    by_fold: dict[int, list[RunImages]] = defaultdict(list)
    for run in runs:
        by_fold[run.keys["fold"]].append(run)
    out = []
    for fold in sorted(by_fold):
        fold_runs = sorted(by_fold[fold], key=lambda r: r.keys["seed"])
        ids = sorted({i for run in fold_runs for i in run.units})
        unit_names = sorted({run.units[i] for run in fold_runs for i in run.units})
        units = [unit_names.index(next(run.units[i] for run in fold_runs if i in run.units)) for i in ids]
        values = [[run.values.get(metric, {}).get(i, math.nan) for i in ids] for run in fold_runs]
        out.append(Block(np.array(values, dtype=float).reshape(len(fold_runs), len(ids)), np.array(units, dtype=int)))
    return out


def describe(runs: Sequence[RunImages], metric: str) -> dict:
    """Mean, sample std and number of the (run, image) values of ``metric`` and their two-way bootstrap CI."""
    fold_blocks = blocks(runs, metric)
    values = np.concatenate([b.values.ravel() for b in fold_blocks]) if fold_blocks else np.array([])
    values = values[~np.isnan(values)]
    low, high = two_way_bootstrap_ci(fold_blocks)
    return {
        "n_values": int(values.size),
        "mean": float(values.mean()) if values.size else math.nan,
        "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
        "ci_low": low,
        "ci_high": high,
    }


def image_pairs(candidate: Sequence[RunImages], baseline: Sequence[RunImages], metric: str) -> list[float]:
    """Per test image (fold, sample_group): the candidate's score minus the baseline's, each averaged over
    the runs (seeds) both losses have in that fold and over the image's samples."""
    differences = []
    folds = sorted({r.keys["fold"] for r in candidate} & {r.keys["fold"] for r in baseline})
    for fold in folds:
        ours = {r.keys["seed"]: r for r in candidate if r.keys["fold"] == fold}
        theirs = {r.keys["seed"]: r for r in baseline if r.keys["fold"] == fold}
        seeds = sorted(set(ours) & set(theirs))

        def unit_means(runs: list[RunImages]) -> dict[str, float]:
            by_unit: dict[str, list[float]] = defaultdict(list)
            for run in runs:
                for sample_id, value in run.values.get(metric, {}).items():
                    by_unit[run.units[sample_id]].append(value)
            return {unit: float(np.mean(v)) for unit, v in by_unit.items()}

        a, b = unit_means([ours[s] for s in seeds]), unit_means([theirs[s] for s in seeds])
        differences += [a[unit] - b[unit] for unit in sorted(set(a) & set(b))]
    return differences
