"""Bootstrap intervals, paired tests and Holm's correction against hand computation and scipy."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lightning_seg.grid import statistics as st
from lightning_seg.run import Records

HOLM_CASES = [
    # (p-values, Holm-adjusted): sorted p(1) ≤ … ≤ p(m), adjusted max_{j≤i} (m − j + 1)·p(j), capped at 1
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),
    ([0.01, 0.02, 0.5, 0.04], [0.04, 0.06, 0.5, 0.08]),
    ([0.3, math.nan, 0.6], [0.6, math.nan, 0.6]),  # NaN is not counted: m = 2
    ([0.5, 0.6], [1.0, 1.0]),
    ([], []),
]


@pytest.mark.parametrize(("p_values", "adjusted"), HOLM_CASES)
def test_holm_hand_computed(p_values, adjusted):
    got = st.holm(p_values)
    assert len(got) == len(adjusted)
    for g, a in zip(got, adjusted, strict=True):
        assert (math.isnan(g) and math.isnan(a)) or g == pytest.approx(a)


def test_wilcoxon_exact_p_and_no_difference():
    # 5 positive differences: W− = 0, exact two-sided p = 2/2⁵
    assert st.wilcoxon([1.0, 2.0, 3.0, 4.0, 5.0]) == (0.0, pytest.approx(2 / 32))
    assert all(math.isnan(v) for v in st.wilcoxon([0.0, 0.0]))
    assert all(math.isnan(v) for v in st.wilcoxon([]))


def test_bootstrap_mean_ci_hand_cases():
    assert st.bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    # two values 0 and 1: resampled means 0, ½, 1 with probabilities ¼, ½, ¼; the 2.5th and 97.5th
    # percentiles of 2000 replicates are 0 and 1
    assert st.bootstrap_mean_ci([0.0, 1.0]) == (0.0, 1.0)
    assert all(math.isnan(v) for v in st.bootstrap_mean_ci([1.0]))
    assert st.bootstrap_mean_ci([1.0, math.nan, 3.0]) == st.bootstrap_mean_ci([1.0, 3.0])  # NaN left out


def test_bootstrap_mean_ci_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(0).normal(10.0, 2.0, size=30)
    ours = st.bootstrap_mean_ci(values, replicates=20000)
    theirs = stats.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", random_state=1)
    # different random draws: the endpoints agree to Monte-Carlo error (about 0.02 here), not exactly
    assert ours == pytest.approx((theirs.confidence_interval.low, theirs.confidence_interval.high), abs=0.06)


def test_two_way_bootstrap_resamples_runs():
    """Values that differ only between runs: the interval is the run bootstrap's (images change nothing)."""
    block = st.Block(np.array([[0.0] * 5, [1.0] * 5]), np.arange(5))
    assert st.two_way_bootstrap_ci([block]) == (0.0, 1.0)


def test_two_way_bootstrap_resamples_images():
    """Values that differ only between images: one run, two images, 0 and 1, gives [0, 1]."""
    assert st.two_way_bootstrap_ci([st.Block(np.array([[0.0, 1.0]]), np.array([0, 1]))]) == (0.0, 1.0)
    assert st.two_way_bootstrap_ci([st.Block(np.full((3, 4), 7.0), np.arange(4))]) == (7.0, 7.0)


def test_two_way_bootstrap_draws_whole_images():
    """15 tiles of one image at 0 and 1 tile of another at 1: drawn as two images, a replicate is 0, 1/16 or 1
    (both draws the second image, probability ¼), so the upper end is 1. Tiles drawn one by one would almost
    never average above 0.3."""
    values = np.array([[0.0] * 15 + [1.0]])
    units = np.array([0] * 15 + [1])
    assert st.two_way_bootstrap_ci([st.Block(values, units)]) == (0.0, 1.0)
    assert st.two_way_bootstrap_ci([st.Block(values, np.arange(16))])[1] < 0.3


def test_two_way_bootstrap_pools_folds_and_skips_missing_values():
    """Two folds with constant values 0 and 1 and equal sizes: every replicate is their mean ½; a NaN
    (a class absent from an image) is not a value."""
    folds = [st.Block(np.zeros((2, 3)), np.arange(3)), st.Block(np.ones((2, 3)), np.arange(3))]
    assert st.two_way_bootstrap_ci(folds) == pytest.approx((0.5, 0.5))
    # fold 1: zeros with one image that has no value; of its 3 draws, k have a value, P(k = 3) = 8/27,
    # P(k = 0) = 1/27; fold 2: two ones. A replicate is 2 / (2 + k): the 2.5 % and 97.5 % points are 2/5 and 1.
    with_nan = [st.Block(np.array([[0.0, math.nan, 0.0]]), np.arange(3)), st.Block(np.ones((1, 2)), np.arange(2))]
    assert st.two_way_bootstrap_ci(with_nan) == pytest.approx((0.4, 1.0))
    assert all(math.isnan(v) for v in st.two_way_bootstrap_ci([st.Block(np.array([[math.nan, 1.0]]), np.arange(2))]))


def test_block_checks_shapes():
    with pytest.raises(ValueError, match="runs × samples values and one unit per sample"):
        st.Block(np.zeros((2, 3)), np.arange(2))
    with pytest.raises(ValueError, match="number the images 0"):
        st.Block(np.zeros((1, 2)), np.array([0, 2]))


def run(loss: str, fold: int, seed: int, values: dict[str, float], units: dict[str, str] | None = None) -> st.RunImages:
    keys = {"dataset": "d", "model": "m", "fraction": 1.0, "loss": loss, "fold": fold, "seed": seed}
    return st.RunImages(keys, Path("."), {"image_dice": values}, units or {i: i for i in values}, ["c"])


def test_describe_pools_images_and_runs():
    runs = [run("ce", 0, 0, {"a": 10.0, "b": 20.0}), run("ce", 0, 1, {"a": 30.0}), run("ce", 1, 0, {"c": 40.0})]
    described = st.describe(runs, "image_dice")
    assert described["n_values"] == 4
    assert described["mean"] == pytest.approx(25.0)
    assert described["std"] == pytest.approx(np.std([10, 20, 30, 40], ddof=1))
    assert described["ci_low"] < 25.0 < described["ci_high"]


def test_image_pairs_average_shared_seeds_and_tiles_of_one_image():
    # fold 0: image "x" has tiles x/1, x/2; image "y" one sample. Seeds 0 and 1 in both losses, seed 2 only in ml.
    units = {"x/1": "x", "x/2": "x", "y": "y"}
    ml = [
        run("ml", 0, 0, {"x/1": 10.0, "x/2": 20.0, "y": 50.0}, units),
        run("ml", 0, 1, {"x/1": 30.0, "x/2": 40.0, "y": 70.0}, units),
        run("ml", 0, 2, {"x/1": 99.0, "x/2": 99.0, "y": 99.0}, units),  # no CE partner: left out
    ]
    ce = [run("ce", 0, 0, {"x/1": 5.0, "x/2": 5.0, "y": 60.0}, units), run("ce", 0, 1, {"x/1": 5.0, "x/2": 5.0}, units)]
    # x: ml mean(10, 20, 30, 40) = 25, ce 5 → +20; y: ml mean(50, 70) = 60, ce 60 (seed 1 has no value) → 0
    assert st.image_pairs(ml, ce, "image_dice") == [20.0, 0.0]


def test_run_images_reads_a_per_image_file(tmp_path):
    from lightning_seg.evaluation.records import write_per_image

    rows = [
        {"id": "01/t0", "sample_group": "01", "class": "bg", "case": "both_present", "target_pixels": 9,
         "pred_pixels": 9, "dice": 0.5, "iou": 1 / 3, "hd95": 2.0, "nsd": 0.25, "cldice": math.nan},
        {"id": "01/t0", "sample_group": "01", "class": "vessel", "case": "both_empty", "target_pixels": 0,
         "pred_pixels": 0, "dice": math.nan, "iou": math.nan, "hd95": math.nan, "nsd": math.nan, "cldice": math.nan},
        {"id": "01/t1", "sample_group": "01", "class": "vessel", "case": "missed", "target_pixels": 3,
         "pred_pixels": 0, "dice": 0.0, "iou": 0.0, "hd95": 5.0, "nsd": 0.0, "cldice": 0.0},
    ]  # fmt: skip
    write_per_image(tmp_path / Records.PER_IMAGE, rows)
    got = st.run_images({"keys": {"dataset": "d"}, "folder": str(tmp_path)})
    assert got.units == {"01/t0": "01", "01/t1": "01"} and got.classes == ["bg", "vessel"]
    assert got.values["image_dice_bg"] == {"01/t0": 50.0}  # percent
    assert got.values["image_hd95_vessel"] == {"01/t1": 5.0}  # pixels; the both-empty row has no value
    assert got.values["image_dice"] == {"01/t0": 50.0, "01/t1": 0.0}  # mean over the classes with a value
    assert "image_cldice_bg" not in got.values
    assert st.run_images({"keys": {}, "folder": str(tmp_path / "nothing")}) is None


def test_docstring_examples():
    result = doctest.testmod(st)
    assert result.attempted and not result.failed
