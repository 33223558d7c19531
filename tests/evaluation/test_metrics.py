"""Per-image scores against hand-made masks with known values, and against independent implementations:
Dice/IoU against torchmetrics, HD95/NSD against scipy distance transforms, clDice against its definition."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.functional.classification import binary_f1_score, binary_jaccard_index

from lightning_seg.evaluation import calibration, metrics, policy
from lightning_seg.evaluation.metrics import class_scores, cldice, image_scores, overlap_scores, surface_scores


def box(shape, top, left, height, width) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + height, left : left + width] = True
    return mask


def hline(shape, row, start, stop, thickness=1) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[row : row + thickness, start:stop] = True
    return mask


# --- Dice and IoU ----------------------------------------------------------------------------------------------

OVERLAP_CASES = [
    # (pred, target, dice, iou)
    (box((8, 8), 0, 0, 2, 2), box((8, 8), 0, 0, 2, 2), 1.0, 1.0),
    (box((8, 8), 0, 0, 2, 2), box((8, 8), 0, 1, 2, 2), 0.5, 1 / 3),  # 2 of 4 + 4 pixels shared
    (box((8, 8), 0, 0, 2, 2), box((8, 8), 4, 4, 2, 2), 0.0, 0.0),
    (box((8, 8), 0, 0, 4, 4), box((8, 8), 0, 0, 2, 2), 2 * 4 / 20, 4 / 16),
]


@pytest.mark.parametrize(("pred", "target", "dice", "iou"), OVERLAP_CASES)
def test_overlap_scores_known_values(pred, target, dice, iou):
    assert overlap_scores(pred, target) == pytest.approx((dice, iou))


def test_overlap_scores_match_torchmetrics_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pred, target = rng.random((2, 16, 16)) < rng.uniform(0.05, 0.6, (2, 1, 1))
        dice, iou = overlap_scores(pred, target)
        p, t = torch.from_numpy(pred).long(), torch.from_numpy(target).long()
        assert dice == pytest.approx(binary_f1_score(p, t).item(), rel=1e-6)
        assert iou == pytest.approx(binary_jaccard_index(p, t).item(), rel=1e-6)


# --- HD95 and NSD ---------------------------------------------------------------------------------------------

#: Two parallel 1-pixel lines d rows apart: every boundary pixel is at distance d from the other line's.
#: A 3×3 square against itself shifted by one column: per direction 4 of 8 boundary pixels at 0, 4 at 1.
SURFACE_CASES = [
    # (pred, target, tolerance, hd95, nsd)
    (hline((16, 16), 5, 2, 12), hline((16, 16), 5, 2, 12), 0.0, 0.0, 1.0),
    (hline((16, 16), 5, 2, 12), hline((16, 16), 8, 2, 12), 2.0, 3.0, 0.0),
    (hline((16, 16), 5, 2, 12), hline((16, 16), 8, 2, 12), 3.0, 3.0, 1.0),
    (box((8, 8), 2, 2, 3, 3), box((8, 8), 2, 3, 3, 3), 0.5, 1.0, 0.5),
    (box((8, 8), 2, 2, 3, 3), box((8, 8), 2, 3, 3, 3), 1.0, 1.0, 1.0),
    # one extra pixel 10 columns away among 10 line pixels at distance 0: the directed distances from the
    # prediction are ten 0s and one 10; the 95th percentile interpolates 0.5 of the way from 0 to 10: 5.
    (hline((4, 24), 1, 0, 10) | box((4, 24), 1, 19, 1, 1), hline((4, 24), 1, 0, 10), 1.0, 5.0, 20 / 21),
]


@pytest.mark.parametrize(("pred", "target", "tolerance", "hd95", "nsd"), SURFACE_CASES)
def test_surface_scores_known_values(pred, target, tolerance, hd95, nsd):
    got_hd95, got_nsd = surface_scores(pred, target, tolerance)
    assert got_hd95 == pytest.approx(hd95, abs=1e-5)
    assert got_nsd == pytest.approx(nsd, abs=1e-6)


def scipy_surface_scores(pred: np.ndarray, target: np.ndarray, tolerance: float) -> tuple[float, float]:
    """The same definitions from scipy alone: boundaries by 4-connected erosion, distances by the exact EDT."""
    edges = [m ^ ndimage.binary_erosion(m) for m in (pred, target)]
    to_target = ndimage.distance_transform_edt(~edges[1])[edges[0]]
    to_pred = ndimage.distance_transform_edt(~edges[0])[edges[1]]
    hd95 = max(np.percentile(to_target, 95), np.percentile(to_pred, 95))
    nsd = (np.sum(to_target <= tolerance) + np.sum(to_pred <= tolerance)) / (to_target.size + to_pred.size)
    return float(hd95), float(nsd)


@pytest.mark.parametrize("seed", range(6))
def test_surface_scores_match_scipy_distance_transforms(seed):
    rng = np.random.default_rng(seed)
    blobs = [ndimage.gaussian_filter(rng.standard_normal((48, 40)), 3) > 0.2 for _ in range(2)]
    if not (blobs[0].any() and blobs[1].any()):
        pytest.fail("the random masks must not be empty")
    for tolerance in (0.0, 1.0, 2.0, 3.5):
        got = surface_scores(blobs[0], blobs[1], tolerance)
        want = scipy_surface_scores(blobs[0], blobs[1], tolerance)
        assert got[0] == pytest.approx(want[0], rel=1e-5)
        assert got[1] == pytest.approx(want[1], abs=1e-6)


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")  # MONAI's own internal call
@pytest.mark.parametrize("seed", range(4))
def test_surface_scores_equal_monais_public_metrics(seed):
    """One edge-and-distance computation for both scores gives exactly MONAI's two metric functions' values."""
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(seed)
    pred, target = (ndimage.gaussian_filter(rng.standard_normal((40, 56)), 2) > 0.3 for _ in range(2))
    y_pred, y = torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None]
    hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95).item()
    for tolerance in (0.0, 1.0, 2.0):
        nsd = compute_surface_dice(y_pred, y, [tolerance], include_background=True).item()
        assert surface_scores(pred, target, tolerance) == (pytest.approx(hd95, abs=0), pytest.approx(nsd, abs=1e-7))


def test_surface_scores_refuse_empty_masks_and_negative_tolerance():
    empty, line = np.zeros((8, 8), bool), hline((8, 8), 2, 1, 6)
    with pytest.raises(ValueError, match="two non-empty masks"):
        surface_scores(empty, line, 1.0)
    with pytest.raises(ValueError, match="tolerance must be ≥ 0"):
        surface_scores(line, line, -1.0)
    with pytest.raises(ValueError, match="H×W masks of one shape"):
        surface_scores(line, line[:4], 1.0)


# --- clDice ---------------------------------------------------------------------------------------------------

#: A 1-pixel line is its own skeleton. The skeleton of the 3-pixel-thick bar rows 3-5, columns 2-17 is its
#: middle row, columns 2-15, and one pixel (3, 16) where Zhang-Suen thinning leaves a corner: 15 pixels.
CLDICE_CASES = [
    # identical structures
    (hline((9, 20), 4, 2, 18), hline((9, 20), 4, 2, 18), 1.0),
    # the prediction is the centre row of the thick target: Tprec = 1 (the line lies in T); 14 of the 15
    # skeleton pixels of T lie in P, Tsens = 14/15, clDice = 2·(14/15) / (1 + 14/15) = 28/29
    (hline((9, 20), 4, 2, 18), hline((9, 20), 3, 2, 18, thickness=3), 28 / 29),
    # the prediction covers the left half of the line: Tprec = 1, Tsens = 8 / 16, clDice = 2·0.5/1.5
    (hline((9, 20), 4, 2, 10), hline((9, 20), 4, 2, 18), 2 / 3),
    # disjoint parallel lines: both 0
    (hline((9, 20), 1, 2, 18), hline((9, 20), 6, 2, 18), 0.0),
]


@pytest.mark.parametrize(("pred", "target", "expected"), CLDICE_CASES)
def test_cldice_known_values(pred, target, expected):
    assert cldice(pred, target) == pytest.approx(expected)


def test_cldice_against_its_definition_with_skimage_skeletons():
    from skimage.morphology import skeletonize

    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.standard_normal((40, 40)), 2)
    target = np.abs(field) < 0.05  # thin winding ridges
    pred = np.abs(field + 0.02 * rng.standard_normal((40, 40))) < 0.06
    s_pred, s_target = skeletonize(pred), skeletonize(target)
    tprec = (s_pred & target).sum() / s_pred.sum()
    tsens = (s_target & pred).sum() / s_target.sum()
    assert 0.2 < tprec < 1 and 0.2 < tsens < 1  # a non-trivial case
    assert cldice(pred, target) == pytest.approx(2 * tprec * tsens / (tprec + tsens))


# --- the empty-class policy, case by case ----------------------------------------------------------------------

H, W = 6, 8
DIAGONAL = 10.0  # sqrt(6² + 8²)
EMPTY = np.zeros((H, W), bool)
LINE = hline((H, W), 2, 1, 7)

POLICY_CASES = [
    # (pred, target, both_empty, case, dice, iou, hd95, nsd, cldice)
    (EMPTY, EMPTY, "exclude", "both_empty", math.nan, math.nan, math.nan, math.nan, math.nan),
    (EMPTY, EMPTY, "perfect", "both_empty", 1.0, 1.0, 0.0, 1.0, 1.0),
    (LINE, EMPTY, "exclude", "false_positive", 0.0, 0.0, DIAGONAL, 0.0, 0.0),
    (LINE, EMPTY, "perfect", "false_positive", 0.0, 0.0, DIAGONAL, 0.0, 0.0),
    (EMPTY, LINE, "exclude", "missed", 0.0, 0.0, DIAGONAL, 0.0, 0.0),
    (EMPTY, LINE, "perfect", "missed", 0.0, 0.0, DIAGONAL, 0.0, 0.0),
    (LINE, LINE, "exclude", "both_present", 1.0, 1.0, 0.0, 1.0, 1.0),
]


@pytest.mark.parametrize(("pred", "target", "both_empty", "case", *policy.SCORES), POLICY_CASES)
def test_empty_class_policy_case_by_case(pred, target, both_empty, case, dice, iou, hd95, nsd, cldice):
    row = class_scores(pred, target, tolerance=1.0, curvilinear=True, both_empty=both_empty)
    assert row["case"] == case
    for score, expected in zip(policy.SCORES, (dice, iou, hd95, nsd, cldice), strict=True):
        if math.isnan(expected):
            assert math.isnan(row[score]), score
        else:
            assert row[score] == pytest.approx(expected), score


def test_a_missed_structure_never_scores_better_than_a_found_one():
    """MONAI#9095: a NaN HD95 for a missed structure drops out of the mean. Here it is the diagonal, larger
    than the HD95 of any prediction that found something in the same image."""
    target = box((32, 32), 0, 0, 2, 2)
    far = box((32, 32), 30, 30, 2, 2)
    missed = class_scores(np.zeros_like(target), target, tolerance=1.0)
    found_far = class_scores(far, target, tolerance=1.0)
    assert missed["hd95"] == pytest.approx(math.hypot(32, 32))
    # the far box's boundary pixels lie 41.0 to 42.4 pixels from the target's: its HD95 is about 42.3
    assert missed["hd95"] > found_far["hd95"] > 41.0
    assert missed["nsd"] == 0.0 and not any(math.isnan(missed[s]) for s in ("dice", "iou", "hd95", "nsd"))


def test_not_curvilinear_classes_have_no_cldice_whatever_the_case():
    for pred, target in ((LINE, LINE), (LINE, EMPTY), (EMPTY, LINE), (EMPTY, EMPTY)):
        assert math.isnan(class_scores(pred, target, tolerance=1.0, both_empty="perfect")["cldice"])


def test_policy_values_and_errors():
    assert policy.policy_value(policy.Case.MISSED, "hd95", 3, 4) == 5.0
    assert policy.policy_value(policy.Case.BOTH_PRESENT, "dice", 3, 4) is None
    with pytest.raises(ValueError, match="unknown score 'hd99'"):
        policy.policy_value(policy.Case.MISSED, "hd99", 3, 4)
    with pytest.raises(ValueError, match="both_empty must be one of"):
        policy.policy_value(policy.Case.BOTH_EMPTY, "dice", 3, 4, both_empty="one")


# --- a whole label map ----------------------------------------------------------------------------------------


def test_image_scores_one_row_per_class_with_ignored_pixels_left_out():
    target = np.zeros((H, W), int)
    target[2, 1:7] = 1  # class 1: the line; class 2 absent
    pred = target.copy()
    pred[0, 0] = 2  # a false positive of class 2
    target[5, :] = 255  # ignored row: whatever is predicted there does not count
    pred[5, :] = 1
    rows = image_scores(pred, target, 3, tolerance=1.0, ignore_index=255, curvilinear={1})
    assert [r["class_index"] for r in rows] == [0, 1, 2]
    assert [r["case"] for r in rows] == ["both_present", "both_present", "false_positive"]
    assert rows[1]["target_pixels"] == rows[1]["pred_pixels"] == 6  # the ignored row left out of the prediction
    assert rows[1]["dice"] == rows[1]["cldice"] == 1.0 and rows[1]["hd95"] == 0.0
    assert rows[0]["target_pixels"] == H * W - 6 - W and rows[0]["pred_pixels"] == H * W - 6 - W - 1
    assert rows[2]["dice"] == 0.0 and rows[2]["hd95"] == DIAGONAL
    assert math.isnan(rows[0]["cldice"]) and math.isnan(rows[2]["cldice"])


def test_image_scores_reject_labels_out_of_range():
    with pytest.raises(ValueError, match=r"target has labels outside \[0, 2\)"):
        image_scores(np.zeros((4, 4), int), np.full((4, 4), 3), 2, tolerance=1.0, ignore_index=255)
    with pytest.raises(ValueError, match="H×W label maps of one shape"):
        image_scores(np.zeros((4, 4), int), np.zeros((4, 5), int), 2, tolerance=1.0)


def test_docstring_examples():
    for module in (metrics, policy, calibration):
        result = doctest.testmod(module, extraglobs={"np": np, "torch": torch})
        assert result.attempted and not result.failed, module.__name__


def test_docs_print_the_policy_table():
    from tests.conftest import REPO

    assert policy.policy_table() in (REPO / "docs" / "evaluation.md").read_text()
