"""The empty-class policy: what each per-image metric is when a class is absent from the target, the
prediction or both. One table, :data:`POLICY`, read by the metric code and printed in docs/evaluation.md.

A per-image score compares the prediction mask ``P`` of one class with its target mask ``T`` (both over the
image's non-ignored pixels). Overlap (Dice, IoU), boundary (HD95, NSD) and topology (clDice) scores are
defined only when both masks are non-empty. The other three cases:

- **both empty**: nothing to find and nothing found. Dice, IoU, NSD and clDice are 0/0 and HD95 has no
  surface to measure. By default these rows have no value and leave every mean (``both_empty="exclude"``,
  as nnU-Net does); ``both_empty="perfect"`` scores them as a perfect prediction (1, and HD95 0).
- **false positive** (``T`` empty, ``P`` not): a structure was invented. Every score is at its worst.
- **missed** (``T`` not empty, ``P`` empty): a structure was not found. Every score is at its worst.

"Worst" is 0 for the scores in [0, 1] and the image diagonal ``sqrt(H² + W²)`` for HD95: longer than any
distance between two pixel centres of the image, so a missed or invented structure always ranks below any
prediction that found it. MONAI returns NaN or ``inf`` for these cases (Project-MONAI/MONAI#9095: a NaN HD95 drops
out of the mean, so a model that misses more looks better; #7504: 0 or NaN depending on the function), so
they are decided here, before MONAI is called, and MONAI only ever sees two non-empty masks.
"""

from __future__ import annotations

import math
from enum import Enum

#: Per-image scores, in the column order of the per-image file.
SCORES = ("dice", "iou", "hd95", "nsd", "cldice")
#: The options of ``both_empty``.
BOTH_EMPTY_OPTIONS = ("exclude", "perfect")


class Case(str, Enum):
    """Which of ``T`` (target) and ``P`` (prediction) of one class in one image hold pixels."""

    BOTH_PRESENT = "both_present"
    BOTH_EMPTY = "both_empty"
    FALSE_POSITIVE = "false_positive"
    MISSED = "missed"

    @classmethod
    def of(cls, target_pixels: int, pred_pixels: int) -> Case:
        if target_pixels and pred_pixels:
            return cls.BOTH_PRESENT
        if target_pixels:
            return cls.MISSED
        return cls.FALSE_POSITIVE if pred_pixels else cls.BOTH_EMPTY


#: Symbolic values: ``"computed"`` (the metric's own value), ``"worst"``, ``"best"``, ``"none"`` (no value).
POLICY: dict[Case, dict[str, str]] = {
    Case.BOTH_PRESENT: dict.fromkeys(SCORES, "computed"),
    Case.BOTH_EMPTY: dict.fromkeys(SCORES, "none"),  # or "best" with both_empty="perfect"
    Case.FALSE_POSITIVE: dict.fromkeys(SCORES, "worst"),
    Case.MISSED: dict.fromkeys(SCORES, "worst"),
}


def diagonal(height: int, width: int) -> float:
    """The image diagonal in pixels, ``sqrt(H² + W²)``: the HD95 of a missed or invented structure."""
    return math.hypot(height, width)


def worst(score: str, height: int, width: int) -> float:
    return diagonal(height, width) if score == "hd95" else 0.0


def best(score: str) -> float:
    return 0.0 if score == "hd95" else 1.0


def policy_value(case: Case, score: str, height: int, width: int, both_empty: str = "exclude") -> float | None:
    """The value :data:`POLICY` gives ``score`` in ``case``; ``None`` where the metric must be computed.

    Raises:
        ValueError: for an unknown ``score`` or ``both_empty``.

    Example:
        >>> policy_value(Case.MISSED, "hd95", 3, 4)
        5.0
        >>> policy_value(Case.BOTH_EMPTY, "dice", 3, 4)
        nan
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; expected one of {SCORES}")
    if both_empty not in BOTH_EMPTY_OPTIONS:
        raise ValueError(f"both_empty must be one of {BOTH_EMPTY_OPTIONS}, got {both_empty!r}")
    rule = POLICY[case][score]
    if rule == "none" and both_empty == "perfect":
        rule = "best"
    return {
        "computed": None,
        "none": math.nan,
        "best": best(score),
        "worst": worst(score, height, width),
    }[rule]


def policy_table() -> str:
    """:data:`POLICY` as the Markdown table of docs/evaluation.md (a test keeps the two equal)."""

    def describe(rule: str, score: str) -> str:
        if rule == "computed":
            return "computed"
        if rule == "worst":
            return "√(H² + W²)" if score == "hd95" else "0"
        return f"excluded (`perfect`: {best(score):g})"

    present = {
        Case.BOTH_PRESENT: ("yes", "yes"),
        Case.BOTH_EMPTY: ("empty", "empty"),
        Case.FALSE_POSITIVE: ("empty", "yes"),
        Case.MISSED: ("yes", "empty"),
    }
    lines = ["| case | target | prediction | " + " | ".join(SCORES) + " |", "|" + " --- |" * (3 + len(SCORES))]
    for case, rules in POLICY.items():
        cells = [f"`{case.value}`", *present[case], *(describe(rules[s], s) for s in SCORES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
