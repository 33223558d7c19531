"""Per-image, per-class scores of a label map against its target: Dice, IoU, HD95, NSD, clDice.

Pure functions on NumPy arrays, no Lightning. Each score is computed by a maintained implementation where
one is exact, with its conventions pinned here and in docs/evaluation.md:

- **Dice, IoU** from pixel counts over the image's non-ignored pixels: ``2|P∩T| / (|P| + |T|)`` and
  ``|P∩T| / |P∪T|`` (the per-image analogue of the dataset-level torchmetrics scores the module logs).
- **HD95** as :func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``: boundary pixels are
  the pixels of a mask removed by one binary erosion with the 4-connected cross (``scipy.ndimage.binary_erosion``,
  pixels outside the image count as background); distances are Euclidean between pixel centres, spacing
  1 pixel; each direction (prediction → target boundary and back) gives its 95th percentile
  (``torch.quantile``, linear interpolation) and HD95 is the larger of the two.
- **NSD** (normalised surface Dice, Nikolov et al. 2021) as :func:`monai.metrics.compute_surface_dice` on the
  same boundaries and distances: the share of boundary pixels of both masks within ``tolerance`` pixels
  (``≤``) of the other mask's boundary; no sub-pixel boundary areas (``use_subvoxels=False``).

  Both take their boundaries and distances from one call of MONAI's
  :func:`monai.metrics.utils.get_edge_surface_distance`, the function both of MONAI's metrics call, instead
  of computing them twice (half the cost); the reductions are those two functions' (a test checks that the
  values are equal).
- **clDice** (Shit et al. 2021) with :func:`skimage.morphology.skeletonize` (Zhang-Suen thinning in 2-D):
  ``Tprec = |S(P) ∩ T| / |S(P)|``, ``Tsens = |S(T) ∩ P| / |S(T)|``, ``clDice = 2·Tprec·Tsens / (Tprec + Tsens)``
  (0 when both are 0). Thinning never deletes the last pixel of a component, so a non-empty mask has a
  non-empty skeleton.

When a class is absent from the target or the prediction, :mod:`~lightning_seg.evaluation.policy` decides,
and MONAI is never called on an empty mask.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection

import numpy as np
import torch

from .policy import SCORES, Case, policy_value

#: The percentile of the Hausdorff distance reported as ``hd95``.
HD_PERCENTILE = 95.0


def _check_masks(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must be H×W masks of one shape, got {pred.shape} and {target.shape}")
    return pred, target


def overlap_scores(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """``(Dice, IoU)`` of two boolean H×W masks that are not both empty.

    ``Dice = 2|P∩T| / (|P| + |T|)``, ``IoU = |P∩T| / |P∪T|``.

    Raises:
        ValueError: if both masks are empty (the policy decides that case) or the shapes differ.

    Example:
        >>> overlap_scores(np.array([[1, 1, 0]]), np.array([[0, 1, 1]]))
        (0.5, 0.3333333333333333)
    """
    pred, target = _check_masks(pred, target)
    intersection = int(np.count_nonzero(pred & target))
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(target))
    if total == 0:
        raise ValueError("Dice and IoU of two empty masks are undefined; see lightning_seg.evaluation.policy")
    return 2 * intersection / total, intersection / (total - intersection)


def surface_scores(pred: np.ndarray, target: np.ndarray, tolerance: float) -> tuple[float, float]:
    """``(HD95, NSD)`` of two non-empty boolean H×W masks, in pixels and in [0, 1], by MONAI (module docstring).

    Raises:
        ValueError: if a mask is empty (MONAI would give NaN or inf there) or ``tolerance`` is negative.

    Example:
        >>> square = np.zeros((8, 8), bool); square[2:5, 2:5] = True
        >>> surface_scores(square, np.roll(square, 1, axis=1), tolerance=0.5)
        (1.0, 0.5)
    """
    from monai.metrics.utils import get_edge_surface_distance

    pred, target = _check_masks(pred, target)
    if not pred.any() or not target.any():
        raise ValueError("surface distances need two non-empty masks; see lightning_seg.evaluation.policy")
    if not tolerance >= 0:
        raise ValueError(f"the NSD tolerance must be ≥ 0 pixels, got {tolerance}")
    with warnings.catch_warnings():
        # MONAI ≥ 1.5 warns about a deprecated argument of its own internal calls; nothing a user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
        _, distances, _ = get_edge_surface_distance(torch.from_numpy(pred), torch.from_numpy(target), symmetric=True)
    hd95 = max(float(torch.quantile(d, HD_PERCENTILE / 100)) for d in distances)
    within = sum(int((d <= tolerance).sum()) for d in distances)
    return hd95, within / sum(len(d) for d in distances)


def cldice(pred: np.ndarray, target: np.ndarray) -> float:
    """Centreline Dice of two non-empty boolean H×W masks (module docstring).

    Raises:
        ValueError: if a mask is empty.

    Example:
        >>> line = np.zeros((5, 7), bool); line[2, 1:6] = True
        >>> cldice(line, line)
        1.0
    """
    from skimage.morphology import skeletonize

    pred, target = _check_masks(pred, target)
    if not pred.any() or not target.any():
        raise ValueError("clDice needs two non-empty masks; see lightning_seg.evaluation.policy")
    skeleton_pred, skeleton_target = skeletonize(pred), skeletonize(target)
    precision = np.count_nonzero(skeleton_pred & target) / np.count_nonzero(skeleton_pred)
    sensitivity = np.count_nonzero(skeleton_target & pred) / np.count_nonzero(skeleton_target)
    if precision + sensitivity == 0:
        return 0.0
    return float(2 * precision * sensitivity / (precision + sensitivity))


def class_scores(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    tolerance: float,
    curvilinear: bool = False,
    both_empty: str = "exclude",
) -> dict:
    """Pixel counts, case and every score of one class in one image, the empty-class policy applied.

    Args:
        pred, target: boolean H×W masks of the class (ignored pixels already ``False`` in both).
        tolerance: NSD tolerance in pixels.
        curvilinear: compute clDice (otherwise ``cldice`` is NaN: not applicable).
        both_empty: ``"exclude"`` or ``"perfect"`` (see :mod:`~lightning_seg.evaluation.policy`).

    Returns:
        ``{"case", "target_pixels", "pred_pixels", "dice", "iou", "hd95", "nsd", "cldice"}``; NaN only for a
        both-empty class under ``both_empty="exclude"`` and for ``cldice`` of a class that is not curvilinear.
    """
    pred, target = _check_masks(pred, target)
    height, width = target.shape
    target_pixels, pred_pixels = int(np.count_nonzero(target)), int(np.count_nonzero(pred))
    case = Case.of(target_pixels, pred_pixels)
    row: dict = {"case": case.value, "target_pixels": target_pixels, "pred_pixels": pred_pixels}
    if case is Case.BOTH_PRESENT:
        row["dice"], row["iou"] = overlap_scores(pred, target)
        row["hd95"], row["nsd"] = surface_scores(pred, target, tolerance)
        row["cldice"] = cldice(pred, target) if curvilinear else math.nan
    else:
        for score in SCORES:
            row[score] = policy_value(case, score, height, width, both_empty)
        if not curvilinear:
            row["cldice"] = math.nan
    return row


def image_scores(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    *,
    tolerance: float,
    ignore_index: int | None = None,
    curvilinear: Collection[int] = (),
    both_empty: str = "exclude",
) -> list[dict]:
    """:func:`class_scores` of every class ``0 … num_classes-1`` of one H×W label map, each with its ``class_index``.

    Pixels where ``target == ignore_index`` are left out of both masks.

    Raises:
        ValueError: if the shapes differ or a label lies outside ``[0, num_classes)`` (and is not ``ignore_index``).
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must be H×W label maps of one shape, got {pred.shape} and {target.shape}")
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    for name, labels in (("pred", pred[valid]), ("target", target[valid])):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes}) (ignore_index={ignore_index})")
    rows = []
    for c in range(num_classes):
        scores = class_scores(
            (pred == c) & valid,
            (target == c) & valid,
            tolerance=tolerance,
            curvilinear=c in curvilinear,
            both_empty=both_empty,
        )
        rows.append({"class_index": c, **scores})
    return rows
