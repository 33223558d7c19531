"""An independent NumPy (float64) reference for the paper's losses, written from the paper's equations
(eq. 1-5 and 13 with its erratum, read as in the project's docs) and deliberately *not* from :mod:`lightning_seg.losses`: no torch, no shared helpers, plain
loops over pixels and classes. Forward values only.

Conventions (the documented choices of the library's contract, restated here from the protocol and the brief):

* Pixel ``i`` runs over every non-ignored pixel of the whole batch; ``M`` is their number.
* ``L_CE = (1/M) Σ_i -log p[i, y_i]`` (0 when ``M = 0``).
* Batch soft Dice per class ``Dice_c = (2 Σ_i t_ic p_ic + s) / (Σ_i t_ic + Σ_i p_ic + s)`` with smoothing ``s``.
  ``absent_classes="include"``: ``L_Dice = 1 - mean`` over all C classes; ``"exclude"``: mean over the classes
  present in the batch's (non-ignored) target, and ``L_Dice = 0`` if none is present. ``0/0`` (``s = 0`` and no
  probability mass on an absent class) scores 0.
* ``D = 1 - L_Dice``.
* additive ``λ L_Dice + (1-λ) L_CE``; ML ``L_Dice · L_CE``.
* CAML ``L_Dice · L_CE^α``, ``α = (1 - p̄)^D`` with ``p̄``:
  ``true_class`` the mean of ``p[i, y_i]``; ``all_classes`` the mean of ``p`` over pixels and classes;
  ``max_class`` the mean of ``max_c p[i, c]`` (label-free);
  ``per_pixel``: ``L_Dice · (1/M) Σ_i (-log p[i, y_i])^{α_i}``, ``α_i = (1 - p[i, y_i])^D``.
* fixed r: as CAML with ``D`` replaced by ``r`` in the exponent.
* ``alpha`` reported for losses without an exponent is CAML's ``(1 - p̄_true)^D``; for ``per_pixel`` it is the
  mean of ``α_i`` over the valid pixels.

For the gradient tests two *freezing* hooks exist: ``exponent`` replaces ``D`` in ``α`` by a given number (the
"D held constant" derivative of eq. 14-15), ``alpha`` replaces ``α`` itself (a scalar, or per-pixel values in
the valid-pixel order of :func:`valid_pixels`).
"""

from __future__ import annotations

import math

import numpy as np

PBARS = ("true_class", "all_classes", "per_pixel", "max_class")


def log_softmax_pixel(z: list[float]) -> list[float]:
    """Numerically stable log-softmax of one pixel's logits."""
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def valid_pixels(logits, target, ignore_index: int | None = 255):
    """Probabilities ``P`` (M×C), log-probabilities (M×C) and labels ``y`` (M) of the non-ignored pixels.

    Order: batch, then row, then column (C order).
    """
    logits = np.asarray(logits, dtype=np.float64)
    target = np.asarray(target)
    n_img, n_cls, height, width = logits.shape
    probs, log_probs, labels = [], [], []
    for n in range(n_img):
        for h in range(height):
            for w in range(width):
                y = int(target[n, h, w])
                if ignore_index is not None and y == ignore_index:
                    continue
                if not 0 <= y < n_cls:
                    raise ValueError(f"label {y} outside [0, {n_cls})")
                lp = log_softmax_pixel([float(logits[n, c, h, w]) for c in range(n_cls)])
                log_probs.append(lp)
                probs.append([math.exp(v) for v in lp])
                labels.append(y)
    probs_arr = np.array(probs, dtype=np.float64).reshape(len(labels), n_cls)
    log_probs_arr = np.array(log_probs, dtype=np.float64).reshape(len(labels), n_cls)
    return probs_arr, log_probs_arr, np.array(labels, dtype=np.int64)


def cross_entropy(log_probs: np.ndarray, labels: np.ndarray) -> float:
    m = len(labels)
    if m == 0:
        return 0.0
    return sum(-log_probs[i, labels[i]] for i in range(m)) / m


def dice_per_class(probs: np.ndarray, labels: np.ndarray, num_classes: int, smooth: float) -> list[float]:
    out = []
    for c in range(num_classes):
        inter = 0.0
        t_sum = 0.0
        p_sum = 0.0
        for i in range(len(labels)):
            t = 1.0 if labels[i] == c else 0.0
            inter += t * probs[i, c]
            t_sum += t
            p_sum += probs[i, c]
        num = 2.0 * inter + smooth
        den = t_sum + p_sum + smooth
        # den = 0 needs s = 0 and Σ_i p_ic = 0 (underflow, or no valid pixel): then num = 0 too, and the score is
        # the limit 0 / Σp = 0 of an absent class that receives (vanishing) probability mass.
        out.append(num / den if den != 0 else 0.0)
    return out


def dice_loss(probs, labels, num_classes: int, smooth: float, absent_classes: str) -> float:
    dice = dice_per_class(probs, labels, num_classes, smooth)
    if absent_classes == "include":
        return 1.0 - sum(dice) / num_classes
    if absent_classes == "exclude":
        present = [c for c in range(num_classes) if any(labels == c)]
        if not present:
            return 0.0
        return 1.0 - sum(dice[c] for c in present) / len(present)
    raise ValueError(absent_classes)


def true_class_pbar(probs, labels) -> float:
    m = len(labels)
    if m == 0:
        return 0.0
    return sum(probs[i, labels[i]] for i in range(m)) / m


def all_classes_pbar(probs) -> float:
    if probs.size == 0:
        return 0.0
    return float(sum(probs[i, c] for i in range(probs.shape[0]) for c in range(probs.shape[1])) / probs.size)


def max_class_pbar(probs) -> float:
    m = probs.shape[0]
    if m == 0:
        return 0.0
    return sum(max(probs[i, c] for c in range(probs.shape[1])) for i in range(m)) / m


def evaluate(
    name: str,
    logits,
    target,
    *,
    ignore_index: int | None = 255,
    smooth: float = 1.0,
    absent_classes: str = "include",
    lam: float = 0.5,
    pbar: str = "true_class",
    r: float | None = None,
    alpha_grad: str = "pbar",  # does not change the value; accepted so configs can be passed through
    exponent: float | None = None,
    alpha=None,
) -> dict:
    """Reference value of loss ``name`` and of the logged parts (``loss, ce, dice_loss, p_bar, dice_coef, alpha``)."""
    del alpha_grad
    logits = np.asarray(logits, dtype=np.float64)
    num_classes = logits.shape[1]
    probs, log_probs, labels = valid_pixels(logits, target, ignore_index)
    ce = cross_entropy(log_probs, labels)
    l_dice = dice_loss(probs, labels, num_classes, smooth, absent_classes)
    d = 1.0 - l_dice
    p_true = true_class_pbar(probs, labels)
    out = {"ce": ce, "dice_loss": l_dice, "p_bar": p_true, "dice_coef": d, "alpha_map": None}
    default_alpha = (1.0 - p_true) ** d

    if name == "ce":
        out.update(loss=ce, alpha=default_alpha)
    elif name == "dice":
        out.update(loss=l_dice, alpha=default_alpha)
    elif name == "additive":
        out.update(loss=lam * l_dice + (1.0 - lam) * ce, alpha=default_alpha)
    elif name == "ml":
        out.update(loss=l_dice * ce, alpha=default_alpha)
    elif name in ("caml", "caml_fixed_r"):
        if name == "caml_fixed_r":
            if r is None:
                raise ValueError("caml_fixed_r needs r")
            power = float(r)
        else:
            power = d
        if exponent is not None:
            power = float(exponent)
        m = len(labels)
        if pbar == "per_pixel":
            if alpha is None:
                alpha_map = np.array([(1.0 - probs[i, labels[i]]) ** power for i in range(m)])
            else:
                alpha_map = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (m,)).copy()
            ce_pow = sum((-log_probs[i, labels[i]]) ** alpha_map[i] for i in range(m)) / m if m else 0.0
            out.update(
                loss=l_dice * ce_pow,
                alpha=float(alpha_map.mean()) if m else 0.0,
                alpha_map=alpha_map,
            )
        else:
            if pbar == "true_class":
                p_bar = p_true
            elif pbar == "all_classes":
                p_bar = all_classes_pbar(probs)
            elif pbar == "max_class":
                p_bar = max_class_pbar(probs)
            else:
                raise ValueError(pbar)
            a = (1.0 - p_bar) ** power if alpha is None else float(alpha)
            out.update(loss=l_dice * ce**a, alpha=a)
    else:
        raise ValueError(f"no reference for loss {name!r}")
    return out
