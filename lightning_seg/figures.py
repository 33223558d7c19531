"""Figures of the paper, computed from the registered losses with autograd.

``python -m lightning_seg.figures gradients --out DIR`` writes

- ``gradients.png`` (paper Fig. 1): loss value and gradient magnitude ``|∂L/∂p|`` against the predicted
  probability ``p`` of the true class, binary case, for CE, Dice, additive (λ = 0.5), ML and CAML;
- ``caml_vs_ml.png`` (Fig. 2/5): CAML against ML, with CAML's exponent α = (1 − p̄)^D;
- ``gradients.csv``: the curves.

``python -m lightning_seg.figures claims --out DIR`` measures the paper's gradient claims (Fig. 1: ML amplifies
the gradients of uncertain predictions and suppresses those of confident ones; Fig. 2/5: CAML gives hard pixels
larger gradients than ML and approximates ML at high confidence) in every setting of :func:`claim_sweeps`: the
swept pixel alone or the whole batch together, the confidence of the rest of the batch, the class balance, the
gradient w.r.t. p or the logit, and CAML under every reading of p̄ and gradient path through α. It writes the
verdicts and measured values (``claims.csv``, one row per claim and setting; ``claims.md``, the verdicts) and
the plots ``claims_*.png`` (:func:`plot_claims`). ``docs/paper-claims.md`` reads them.

**The batch** (:class:`Sweep`, :func:`sweep_batch`): one image, two classes, ``size × size`` pixels (N = size²;
16 by default for ``gradients``, 256 for ``claims``), the first ``fg_pixels`` of them in raster order foreground
(class 1, half by default), the rest background. Every pixel but one predicts its true class with the fixed
probability ``rest_p`` (0.7 by default); the swept pixel, (0, 0), a foreground pixel, predicts it with
probability ``p`` (with ``swept="batch"`` every pixel does). Each pixel's logits are ``(log(1 − q), log q)``
for its foreground probability ``q``, so the softmax returns exactly ``q``; ``q`` is the autograd leaf, so
``∂L/∂p_i`` is the derivative of the loss *as implemented* (registry, clamps, detach choices and all) along
the binary simplex at the swept pixel, through the softmax, and ``∂L/∂z_i,y`` its derivative w.r.t. the
pixel's true-class logit. Nothing is re-derived by hand: for CE they come out as ``−1/(N p)`` and
``(p − 1)/N``, which the tests check.

``python -m lightning_seg.figures overlays --config C.yaml [--config …] --ckpt-a A.ckpt --ckpt-b B.ckpt --out DIR``
writes ``overlays.png`` (Fig. 3/4): image | ground truth | prediction of A | prediction of B for the first
test images of the configured data, one row per image, with per-image mIoU of each prediction.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from .callbacks.checkpoint import inspect_checkpoint
from .losses import build_loss
from .losses.paper import AlphaGrad, PBar
from .prediction import predicted_classes
from .run import RunFolder

#: Label → (registry name, arguments) of the losses in the gradient figures.
GRADIENT_LOSSES: dict[str, tuple[str, dict]] = {
    "CE": ("ce", {}),
    "Dice": ("dice", {}),
    "Additive (λ=0.5)": ("additive", {"lam": 0.5}),
    "ML": ("ml", {}),
    "CAML": ("caml", {}),
}
#: One colour per loss, shared by every figure.
LOSS_COLOURS = {
    "CE": "tab:blue",
    "Dice": "tab:orange",
    "Additive (λ=0.5)": "tab:green",
    "ML": "tab:red",
    "CAML": "tab:purple",
}


#: How the batch moves with ``p``: the swept pixel alone, or every pixel together.
SWEPT = ("pixel", "batch")


@dataclass(frozen=True)
class Sweep:
    """The swept batch: one binary ``size × size`` image, ``N = size²`` pixels.

    The first ``fg_pixels`` pixels in raster order are foreground (class 1), the others background (class 0);
    the swept pixel, (0, 0), is a foreground pixel. ``swept="pixel"``: the swept pixel predicts its true class
    with probability ``p`` and every other pixel with ``rest_p``. ``swept="batch"``: every pixel predicts its
    true class with probability ``p`` (``rest_p`` is not used). The losses are invariant to where the pixels
    lie, so the layout only fixes the counts.
    """

    #: Side of the image; N = size² pixels.
    size: int = 4
    #: True-class probability of every pixel but the swept one (``swept="pixel"`` only).
    rest_p: float = 0.7
    #: ``"pixel"`` or ``"batch"``.
    swept: str = "pixel"
    #: Foreground pixels, the swept one included; ``None``: half of the batch.
    fg_pixels: int | None = None

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(
                f"Sweep.size must be ≥ 2 (the batch needs a foreground and a background pixel), got {self.size}"
            )
        if not 0.0 < self.rest_p < 1.0:
            raise ValueError(f"Sweep.rest_p must lie in (0, 1), got {self.rest_p}")
        if self.swept not in SWEPT:
            raise ValueError(f"Sweep.swept must be one of {SWEPT}, got {self.swept!r}")
        if not 1 <= self.n_fg < self.n:
            raise ValueError(
                f"Sweep.fg_pixels must lie in [1, {self.n - 1}] for size {self.size}, got {self.fg_pixels}"
            )

    @property
    def n(self) -> int:
        return self.size * self.size

    @property
    def n_fg(self) -> int:
        return self.n // 2 if self.fg_pixels is None else self.fg_pixels

    def describe(self) -> str:
        """One line for a plot title: the batch, its class balance and what moves with ``p``."""
        moving = "every pixel at p" if self.swept == "batch" else f"one pixel at p, the others at {self.rest_p:g}"
        return f"binary, N={self.n} pixels, swept class {self.n_fg}/{self.n}; {moving}"


def sweep_batch(p: float, sweep: Sweep = Sweep()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Foreground probabilities (1×size×size), logits (1×2×size×size) and target (1×size×size) of the batch.

    ``p`` is the swept pixel's true-class probability. Each pixel's logits are ``(log(1 − q), log q)`` for its
    foreground probability ``q``, so the softmax returns exactly ``q``. ``q`` is a float64 leaf that requires
    grad and the logits are computed from it, so autograd gives a loss's derivative with respect to either.
    """
    is_fg = torch.arange(sweep.n) < sweep.n_fg
    target = is_fg.long().reshape(1, sweep.size, sweep.size)
    true_p = torch.full((sweep.n,), float(p) if sweep.swept == "batch" else sweep.rest_p, dtype=torch.float64)
    true_p[0] = float(p)
    fg_prob = torch.where(is_fg, true_p, 1 - true_p).reshape(1, sweep.size, sweep.size).requires_grad_()
    logits = torch.stack([torch.log1p(-fg_prob), torch.log(fg_prob)], dim=1)
    return fg_prob, logits, target


#: What :func:`loss_curve` records at each ``p``; ``grad`` and ``grad_logit`` are the swept pixel's.
CURVE_KEYS = ("p", "value", "grad", "grad_logit", "ce", "dice_loss", "alpha", "p_bar", "dice_coef")


def loss_curve(name: str, ps: Sequence[float], sweep: Sweep = Sweep(), **loss_kwargs) -> dict[str, np.ndarray]:
    """Value, the swept pixel's gradients and the logged parts of loss ``name`` at each ``p``.

    ``grad`` is ``∂L/∂p_i`` and ``grad_logit`` is ``∂L/∂z_{i,y_i}`` at the swept pixel ``i``, every other
    pixel held where the sweep puts it (for ``swept="pixel"`` that is also ``dL/dp``). ``ce``,
    ``dice_loss``, ``alpha``, ``p_bar`` and ``dice_coef`` are the loss's own :class:`LossParts`.
    """
    loss_fn = build_loss(name, **loss_kwargs)
    out: dict[str, list[float]] = {k: [] for k in CURVE_KEYS}
    for value in ps:
        fg_prob, logits, target = sweep_batch(value, sweep)
        loss = loss_fn(logits, target)
        grad_q, grad_z = torch.autograd.grad(loss, (fg_prob, logits))
        out["p"].append(float(value))
        out["value"].append(loss.item())
        out["grad"].append(grad_q[0, 0, 0].item())
        out["grad_logit"].append(grad_z[0, 1, 0, 0].item())
        for key in ("ce", "dice_loss", "alpha", "p_bar", "dice_coef"):
            out[key].append(getattr(loss_fn.parts, key).item())
    return {k: np.asarray(v) for k, v in out.items()}


def gradient_curves(ps: Sequence[float] | None = None, sweep: Sweep = Sweep()) -> dict[str, dict[str, np.ndarray]]:
    """:func:`loss_curve` of every loss of :data:`GRADIENT_LOSSES`; ``ps`` defaults to 99 points in [0.01, 0.99]."""
    ps = np.linspace(0.01, 0.99, 99) if ps is None else ps
    return {label: loss_curve(name, ps, sweep, **kw) for label, (name, kw) in GRADIENT_LOSSES.items()}


def _figure(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs):
    """A matplotlib figure and its axes, without pyplot: no backend is chosen or changed (safe in notebooks)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_gradients(curves: dict[str, dict[str, np.ndarray]], out: str | Path, sweep: Sweep = Sweep()) -> list[Path]:
    """Write ``gradients.png``, ``caml_vs_ml.png`` and ``gradients.csv`` into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch = sweep.describe()

    fig, (ax_v, ax_g) = _figure(1, 2, (11, 4.2))
    for label, c in curves.items():
        ax_v.plot(c["p"], c["value"], label=label, color=LOSS_COLOURS.get(label))
        ax_g.plot(c["p"], np.abs(c["grad"]), label=label, color=LOSS_COLOURS.get(label))
    ax_v.set(xlabel="p (true-class probability of the swept pixel)", ylabel="loss", title="Loss value")
    ax_g.set(
        xlabel="p (true-class probability of the swept pixel)",
        ylabel="|∂L/∂p|",
        title="Gradient magnitude",
        yscale="log",
    )
    for ax in (ax_v, ax_g):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Loss and gradient vs p ({batch})", fontsize=10)
    fig.tight_layout()
    paths = [out / "gradients.png"]
    fig.savefig(paths[0], dpi=120)

    fig, axes = _figure(1, 3, (14, 4.2))
    for label in ("ML", "CAML"):
        c = curves[label]
        axes[0].plot(c["p"], c["value"], label=label, color=LOSS_COLOURS[label])
        axes[1].plot(c["p"], np.abs(c["grad"]), label=label, color=LOSS_COLOURS[label])
    caml = curves["CAML"]
    axes[2].plot(caml["p"], caml["alpha"], label="α = (1 − p̄)^D", color=LOSS_COLOURS["CAML"])
    axes[2].plot(caml["p"], caml["p_bar"], label="p̄", color="grey", linestyle="--")
    axes[2].plot(caml["p"], caml["dice_coef"], label="D", color="black", linestyle=":")
    axes[0].set(ylabel="loss", title="Loss value")
    axes[1].set(ylabel="|∂L/∂p|", title="Gradient magnitude", yscale="log")
    axes[2].set(ylabel="value", title="CAML's exponent and its inputs")
    for ax in axes:
        ax.set_xlabel("p (true-class probability of the swept pixel)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"CAML vs ML ({batch})", fontsize=10)
    fig.tight_layout()
    paths.append(out / "caml_vs_ml.png")
    fig.savefig(paths[1], dpi=120)

    paths.append(out / "gradients.csv")
    with paths[2].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["loss", *CURVE_KEYS])
        for label, c in curves.items():
            for i in range(len(c["p"])):
                writer.writerow([label, *(f"{c[k][i]:.10g}" for k in CURVE_KEYS)])
    return paths


# --- the paper's gradient claims, measured (Fig. 1, Fig. 2/5) -----------------------------------------------------


def claim_grid(points: int = 99) -> np.ndarray:
    """The p grid of the claims: ``points`` evenly in [0.01, 0.99], then 0.995 and 0.999 (the confident limit)."""
    if points < 3:
        raise ValueError(f"the claims' grid needs at least 3 points, got {points}")
    return np.concatenate([np.linspace(0.01, 0.99, points), [0.995, 0.999]])


#: The p grid of the claims.
P_GRID = claim_grid()
#: Pixels with p below this are hard (misclassified, in the binary case); at or above CONFIDENT_P, confident.
HARD_P = 0.5
CONFIDENT_P = 0.9
#: "Approximates": the gradient ratio stays within 1 ± this.
APPROX_TOL = 0.1
#: The p at which the claims table reports each measured quantity.
REPORT_PS = (0.1, 0.5, 0.9, 0.99, 0.999)
#: Side of the claims' batch: N = 256 pixels, so one pixel moves the batch terms (L_CE, L_Dice, p̄) by ≤ 1/256.
CLAIM_SIZE = 16
#: Confidence of the rest of the batch when one pixel is swept: uncertain, fairly confident, confident.
REST_PS = (0.6, 0.9, 0.99)
#: Class balance: the swept pixel's class's share of the batch.
BALANCES = {"rare": 1 / 64, "balanced": 1 / 2, "common": 63 / 64}
#: Fig. 1's claim is measured against these (labels of GRADIENT_LOSSES).
ML_REFERENCES = ("CE", "Dice", "Additive (λ=0.5)")

#: Verdicts. A ratio claim holds, fails, holds on part of its range, or comes out the other way round.
HOLDS, FAILS, PARTLY, REVERSED, MIXED = "holds", "fails", "partly", "reversed", "mixed"
LARGER, SMALLER = "larger", "smaller"

#: Claim id → what is measured and what counts as holding; one row of the claims table per setting.
CLAIMS = {
    "ml_amplifies_uncertain": "Fig. 1: |∂L_ML| / |∂L_ref| > 1 for uncertain p and < 1 for confident p "
    "(holds: one crossing of 1, from above; p_star: the crossing)",
    "gradient_shrinks": "Fig. 1, absolute reading: the swept pixel's |∂L| shrinks as its p grows "
    f"(holds: never above 1 + {APPROX_TOL} times its value at a lower p; p_star: where |∂L| peaks)",
    "caml_hard_larger": f"Fig. 2/5: |∂L_CAML| / |∂L_ML| > 1 for hard pixels, p < {HARD_P} "
    "(holds: everywhere below; partly: somewhere; p_star: where the ratio crosses 1)",
    "caml_approximates_ml": f"Fig. 2/5: |∂L_CAML| / |∂L_ML| within 1 ± {APPROX_TOL} for confident pixels, p ≥ {CONFIDENT_P} "
    "(p_star: the lowest p from which it stays within)",
    "caml_approximates_dice": f"Known property: |∂L_CAML| / |∂L_Dice| within 1 ± {APPROX_TOL} for p ≥ {CONFIDENT_P} "
    "(CAML tends to Dice; p_star as above)",
    "loss_falls_with_p": "Sanity: raising the swept pixel's true-class probability lowers the loss, ∂L/∂p_i < 0 "
    "on the whole grid (p_star: the lowest p where it does not)",
    "ce_factor_not_monotone": "Known property: CAML's CE factor L_CAML / L_Dice (L_CE^α) is not monotone in p "
    "(holds: a minimum inside the grid; p_star: the minimum)",
}
#: The p range ``[lo, hi)`` each claim's verdict looks at, where it is not the whole grid; the table reports the
#: measured quantity's least and greatest value over it.
CLAIM_RANGES = {
    "caml_hard_larger": (0.0, HARD_P),
    "caml_approximates_ml": (CONFIDENT_P, 1.0),
    "caml_approximates_dice": (CONFIDENT_P, 1.0),
}
#: Columns of ``claims.csv``: the claim, the setting, the losses compared, the verdict and the measured values.
CLAIM_COLUMNS = (
    "claim",
    "swept",
    "rest_p",
    "balance",
    "swept_class_pixels",
    "pixels",
    "wrt",
    "loss",
    "reference",
    "verdict",
    "p_star",
    "range_min",
    "range_max",
    *(f"at_{p:g}" for p in REPORT_PS),
)


def caml_label(pbar: str, alpha_grad: str) -> str:
    """Label of CAML with one reading of p̄ and one gradient path through α, in the claims' table and plots."""
    return f"CAML ({pbar}, α-grad {alpha_grad})"


def caml_variants() -> dict[str, tuple[str, dict]]:
    """Label → (registry name, arguments) of CAML under every registered p̄ reading and gradient path through α.

    The readings and paths are read from the loss's own option types, so a reading added there is swept here.
    """
    return {
        caml_label(pbar, grad): ("caml", {"pbar": pbar, "alpha_grad": grad})
        for pbar in get_args(PBar)
        for grad in get_args(AlphaGrad)
    }


def claim_sweeps(size: int = CLAIM_SIZE) -> list[tuple[str, Sweep]]:
    """The settings of the claims, as (balance name, sweep): for each class balance, every pixel swept together,
    then the swept pixel alone among others at each of :data:`REST_PS`."""
    n = size * size
    sweeps = []
    for balance, share in BALANCES.items():
        fg = min(max(1, round(share * n)), n - 1)
        sweeps.append((balance, Sweep(size, swept="batch", fg_pixels=fg)))
        sweeps += [(balance, Sweep(size, rest_p, "pixel", fg)) for rest_p in REST_PS]
    return sweeps


ClaimCurves = list[tuple[str, Sweep, dict[str, dict[str, np.ndarray]]]]


def claim_curves(ps: Sequence[float] = P_GRID, size: int = CLAIM_SIZE, progress: bool = False) -> ClaimCurves:
    """:func:`loss_curve` of every loss of :data:`GRADIENT_LOSSES` and :func:`caml_variants` in every setting of
    :func:`claim_sweeps`; ``progress`` prints one line per setting to stderr."""
    losses = {**GRADIENT_LOSSES, **caml_variants()}
    sweeps = claim_sweeps(size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few hundred values: threads only add overhead
    try:
        results = []
        for k, (balance, sweep) in enumerate(sweeps, 1):
            if progress:
                print(f"claims: setting {k}/{len(sweeps)} ({balance}; {sweep.describe()})", file=sys.stderr, flush=True)
            results.append(
                (balance, sweep, {label: loss_curve(name, ps, sweep, **kw) for label, (name, kw) in losses.items()})
            )
    finally:
        torch.set_num_threads(threads)
    return results


def _crossings(ps: np.ndarray, ratio: np.ndarray) -> list[float]:
    """The p where ``ratio`` crosses 1, interpolated linearly in log ratio between grid points."""
    log_r = np.log(ratio)
    out = []
    for k in np.flatnonzero((log_r[1:] > 0) != (log_r[:-1] > 0)):
        t = log_r[k] / (log_r[k] - log_r[k + 1])
        out.append(float(ps[k] + t * (ps[k + 1] - ps[k])))
    return out


def amplify_suppress_verdict(ps: np.ndarray, ratio: np.ndarray) -> tuple[str, float]:
    """Fig. 1's claim on a gradient ratio (ML over a reference) against p: (verdict, p where it crosses 1).

    :data:`HOLDS` if the ratio is above 1 at low p and below 1 at high p with one crossing; :data:`REVERSED`
    for one crossing the other way; :data:`LARGER` / :data:`SMALLER` without a crossing; :data:`MIXED` otherwise.
    """
    crossings = _crossings(ps, ratio)
    if not crossings:
        return (LARGER if ratio[0] > 1 else SMALLER), float("nan")
    if len(crossings) > 1:
        return MIXED, crossings[0]
    return (HOLDS if ratio[0] > 1 else REVERSED), crossings[0]


def shrinks_verdict(ps: np.ndarray, magnitude: np.ndarray, tol: float = APPROX_TOL) -> tuple[str, float]:
    """Does a gradient magnitude shrink as p grows, never exceeding ``1 + tol`` times its value at a lower p?

    Returns (:data:`HOLDS` or :data:`FAILS`, the p where the magnitude peaks).
    """
    rise = magnitude / np.minimum.accumulate(magnitude)
    return (HOLDS if rise.max() <= 1 + tol else FAILS), float(ps[int(np.argmax(magnitude))])


def hard_larger_verdict(ps: np.ndarray, ratio: np.ndarray) -> tuple[str, float]:
    """Fig. 2/5's first claim on CAML's gradient over ML's: is it > 1 for every hard p (< :data:`HARD_P`)?

    (:data:`HOLDS`, :data:`PARTLY` or :data:`FAILS`, the first p where the ratio crosses 1 or NaN).
    """
    hard = ps < HARD_P
    larger = ratio[hard] > 1
    verdict = HOLDS if larger.all() else PARTLY if larger.any() else FAILS
    crossings = _crossings(ps, ratio)
    return verdict, crossings[0] if crossings else float("nan")


def approximates_verdict(ps: np.ndarray, ratio: np.ndarray, tol: float = APPROX_TOL) -> tuple[str, float]:
    """Does a gradient ratio stay within ``1 ± tol`` for every confident p (≥ :data:`CONFIDENT_P`)?

    Returns (:data:`HOLDS`, or the direction it misses in, :data:`LARGER` / :data:`SMALLER` / :data:`MIXED`;
    the lowest p from which the ratio stays within ``1 ± tol`` up to the end of the grid, NaN if it ends outside).
    """
    inside = np.abs(ratio - 1) <= tol
    confident = ps >= CONFIDENT_P
    outside = np.flatnonzero(~inside)
    p_star = (
        float(ps[0]) if outside.size == 0 else float(ps[outside[-1] + 1]) if outside[-1] + 1 < ps.size else float("nan")
    )
    if inside[confident].all():
        return HOLDS, p_star
    miss = ratio[confident & ~inside]
    verdict = LARGER if (miss > 1).all() else SMALLER if (miss < 1).all() else MIXED
    return verdict, p_star


def falls_verdict(ps: np.ndarray, grad: np.ndarray) -> tuple[str, float]:
    """Is ``∂L/∂p_i < 0`` at every p? (:data:`HOLDS`/:data:`FAILS`, the lowest p where it is not, or NaN)."""
    not_falling = np.flatnonzero(grad >= 0)
    return (HOLDS, float("nan")) if not_falling.size == 0 else (FAILS, float(ps[not_falling[0]]))


def not_monotone_verdict(ps: np.ndarray, values: np.ndarray) -> tuple[str, float]:
    """Is a curve not monotone in p (a minimum strictly inside the grid)? (:data:`HOLDS`/:data:`FAILS`, argmin)."""
    k = int(np.argmin(values))
    return (HOLDS if 0 < k < len(values) - 1 else FAILS), float(ps[k])


def _magnitude(curve: dict[str, np.ndarray], wrt: str) -> np.ndarray:
    return np.abs(curve["grad" if wrt == "p" else "grad_logit"])


def _setting_rows(balance: str, sweep: Sweep, curves: dict[str, dict[str, np.ndarray]]) -> list[dict[str, object]]:
    """The claims table's rows of one setting."""
    ps = curves["ML"]["p"]
    setting = {
        "swept": sweep.swept,
        "rest_p": sweep.rest_p if sweep.swept == "pixel" else "",
        "balance": balance,
        "swept_class_pixels": sweep.n_fg,
        "pixels": sweep.n,
    }
    rows = []

    def row(claim: str, wrt: str, loss: str, reference: str, verdict: tuple[str, float], values: np.ndarray) -> None:
        lo, hi = CLAIM_RANGES.get(claim, (0.0, 1.0))
        in_range = values[(ps >= lo) & (ps < hi)]
        at = {f"at_{p:g}": float(np.interp(p, ps, values)) for p in REPORT_PS}
        rows.append(
            {"claim": claim, **setting, "wrt": wrt, "loss": loss, "reference": reference}
            | {"verdict": verdict[0], "p_star": verdict[1], "range_min": float(in_range.min())}
            | {"range_max": float(in_range.max()), **at}
        )

    camls = list(caml_variants())
    for wrt in ("p", "logit"):
        ml = _magnitude(curves["ML"], wrt)
        for ref in ML_REFERENCES:
            ratio = ml / _magnitude(curves[ref], wrt)
            row("ml_amplifies_uncertain", wrt, "ML", ref, amplify_suppress_verdict(ps, ratio), ratio)
        for label in (*ML_REFERENCES, "ML", *camls):
            magnitude = _magnitude(curves[label], wrt)
            row("gradient_shrinks", wrt, label, "", shrinks_verdict(ps, magnitude), magnitude)
        for label in camls:
            caml = _magnitude(curves[label], wrt)
            row("caml_hard_larger", wrt, label, "ML", hard_larger_verdict(ps, caml / ml), caml / ml)
            row("caml_approximates_ml", wrt, label, "ML", approximates_verdict(ps, caml / ml), caml / ml)
            ratio = caml / _magnitude(curves["Dice"], wrt)
            row("caml_approximates_dice", wrt, label, "Dice", approximates_verdict(ps, ratio), ratio)
    for label in (*ML_REFERENCES, "ML", *camls):  # the sign is the same w.r.t. the logit: ∂L/∂z = p(1 − p)·∂L/∂p
        row("loss_falls_with_p", "p", label, "", falls_verdict(ps, curves[label]["grad"]), curves[label]["grad"])
    # The property is about the batch's confidence (one pixel of N moves the factor by O(1/N)), and the value does
    # not depend on the gradient path: one row per reading, every pixel swept together.
    for pbar in get_args(PBar) if sweep.swept == "batch" else ():
        label = caml_label(pbar, "pbar")
        factor = curves[label]["value"] / curves["Dice"]["value"]
        row("ce_factor_not_monotone", "value", label, "Dice", not_monotone_verdict(ps, factor), factor)
    return rows


def claims_table(results: ClaimCurves) -> list[dict[str, object]]:
    """One row per claim, setting, gradient (w.r.t. p or the logit) and pair of losses; see :data:`CLAIMS`."""
    return [row for balance, sweep, curves in results for row in _setting_rows(balance, sweep, curves)]


def write_claims_csv(rows: list[dict[str, object]], path: str | Path) -> Path:
    """Write the claims table (columns :data:`CLAIM_COLUMNS`, floats to 4 significant digits)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CLAIM_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in r.items()})
    return path


def _setting_name(row: dict[str, object]) -> str:
    others = "every pixel" if row["swept"] == "batch" else f"others {row['rest_p']:g}"
    return f"{row['balance']}, {others}"


def claims_markdown(rows: list[dict[str, object]]) -> str:
    """The verdicts as Markdown: per claim, one line per compared pair of losses and gradient, one column per
    setting; each cell the verdict and, in brackets, ``p_star``. The values themselves are in ``claims.csv``."""
    lines = [
        "# The paper's gradient claims: verdicts",
        "",
        f"Written by `python -m lightning_seg.figures claims`; binary batch of {rows[0]['pixels']} pixels. "
        "Columns: the swept class's balance, then what else is at p (every pixel) or where the other pixels "
        "stay. Cells: verdict (p_star). The measured values at fixed p are in `claims.csv`.",
    ]
    for claim, description in CLAIMS.items():
        claim_rows = [r for r in rows if r["claim"] == claim]
        settings = list(dict.fromkeys(_setting_name(r) for r in claim_rows))
        cells: dict[str, dict[str, str]] = {}
        for r in claim_rows:
            pair = f"{r['loss']} vs {r['reference']}" if r["reference"] else str(r["loss"])
            of = "values" if r["wrt"] == "value" else f"w.r.t. {r['wrt']}"
            p_star = f" ({r['p_star']:.3g})" if np.isfinite(r["p_star"]) else ""
            cells.setdefault(f"{pair}, {of}", {})[_setting_name(r)] = f"{r['verdict']}{p_star}"
        lines += ["", f"## {claim}", "", description, ""]
        lines += ["| compared | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
        lines += [f"| {pair} | " + " | ".join(c.get(s, "") for s in settings) + " |" for pair, c in cells.items()]
    return "\n".join(lines) + "\n"


#: Colour of each confidence of the rest of the batch in the claims' plots (every pixel together: black).
REST_COLOURS = dict(zip(REST_PS, ("tab:orange", "tab:cyan", "tab:blue"), strict=True))
#: The x axis of the claims' plots: p on a logit scale, which spreads out both the hard and the confident end.
P_AXIS = "p, the swept pixel's true-class probability (logit scale)"


def _setting_style(sweep: Sweep) -> dict[str, object]:
    if sweep.swept == "batch":
        return {"color": "black", "linewidth": 2.2, "label": "every pixel at p"}
    return {
        "color": REST_COLOURS[sweep.rest_p],
        "linewidth": 1.6,
        "label": f"one pixel at p, others at {sweep.rest_p:g}",
    }


def _p_axis(ax, ps: np.ndarray, xlabel: str = P_AXIS) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("logit")
    ax.set_xlim(ps[0], ps[-1])
    ax.xaxis.set_major_locator(FixedLocator([0.01, 0.1, 0.5, 0.9, 0.99, 0.999]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter("{x:g}")
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, which="both")


def _log_y(ax) -> None:
    """Log y axis with plain-number tick labels (0.1, 2, 10), also on axes spanning less than a decade; minor ticks
    at 2 and 5 only (fewer ticks draw faster)."""
    from matplotlib.ticker import LogFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter("{x:g}")
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _ratio_axes(ax, ps: np.ndarray, title: str, ylabel: str, band: bool) -> None:
    """Ratio axes: the line ratio = 1 (with the ±tolerance band if ``band``), the hard and the confident range."""
    ax.axvspan(ps[0], HARD_P, color="tab:red", alpha=0.06, linewidth=0)
    ax.axvspan(CONFIDENT_P, ps[-1], color="tab:green", alpha=0.1, linewidth=0)
    if band:
        ax.axhspan(1 - APPROX_TOL, 1 + APPROX_TOL, color="grey", alpha=0.25, linewidth=0)
    ax.axhline(1, color="grey", linewidth=0.9)
    ax.set(title=title, ylabel=ylabel)
    _p_axis(ax, ps)
    _log_y(ax)


def _figure_legend(fig, ax, band: bool, extra: Sequence = ()) -> None:
    """One legend under the figure: the settings of ``ax``, ``extra`` handles, and the shaded ranges."""
    from matplotlib.patches import Patch

    handles = [
        *ax.get_legend_handles_labels()[0],
        *extra,
        Patch(color="tab:red", alpha=0.15, label=f"hard: p < {HARD_P:g}"),
        Patch(color="tab:green", alpha=0.25, label=f"confident: p ≥ {CONFIDENT_P:g}"),
    ]
    if band:
        handles.append(Patch(color="grey", alpha=0.4, label=f"ratio within 1 ± {APPROX_TOL:g}"))
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False, fontsize=10)


def _save(fig, path: Path, legend_space: float) -> Path:
    """Lay out and write ``fig`` (:func:`save_png`)."""
    fig.tight_layout(rect=(0, legend_space, 1, 0.94))
    return save_png(fig, path)


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` as a 64-colour PNG at 100 dpi: plots use a dozen colours, and a committed file is a quarter of
    the size of the full-colour one."""
    from PIL import Image

    path = Path(path)
    fig.savefig(path, dpi=100)
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=64)
    palette.save(path, optimize=True)
    return path


def _magnitude_ratio(curves: dict[str, dict[str, np.ndarray]], loss: str, reference: str) -> np.ndarray:
    """``|∂L_loss/∂p_i| / |∂L_reference/∂p_i|`` at the swept pixel."""
    return np.abs(curves[loss]["grad"]) / np.abs(curves[reference]["grad"])


def _plot_ratio(ax, curves: dict[str, dict[str, np.ndarray]], loss: str, reference: str, sweep: Sweep) -> np.ndarray:
    """Plot ``loss``'s gradient magnitude over ``reference``'s in the setting's style; mark with × every p where
    ``loss`` rises with p (``∂L/∂p_i ≥ 0``), which a ratio of magnitudes would hide. Returns the ratio."""
    ps = curves[loss]["p"]
    ratio = _magnitude_ratio(curves, loss, reference)
    style = _setting_style(sweep)
    ax.plot(ps, ratio, **style)
    rising = curves[loss]["grad"] >= 0
    ax.plot(ps[rising], ratio[rising], "x", color=style["color"], markersize=6)
    return ratio


def _rising_handle(loss: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="x", color="black", linestyle="", label=f"∂L_{loss}/∂p_i ≥ 0: the loss rises with p")


def plot_claims(results: ClaimCurves, out: str | Path) -> list[Path]:
    """Write the claims' PNGs into ``out`` and return their paths:

    - ``claims_ml_ratio.png`` (Fig. 1): ML's gradient over CE's, Dice's and the additive loss's, per class balance;
    - ``claims_gradients.png`` (Fig. 1, (d)): every loss's gradient w.r.t. p and w.r.t. the logit;
    - ``claims_caml_readings.png`` (Fig. 2/5): CAML's gradient over ML's, per p̄ reading and gradient path;
    - ``claims_caml_balance.png`` (Fig. 2/5): the same for default CAML, per class balance;
    - ``claims_caml_limit.png``: every pixel at p: CAML's CE factor, its inputs, and what CAML tends to.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ps = results[0][2]["ML"]["p"]
    n = results[0][1].n
    balances = {b: s.n_fg for b, s, _ in results}
    by_balance = {b: [(s, c) for b_k, s, c in results if b_k == b] for b in balances}
    balanced = by_balance["balanced"]
    paths = []

    # Fig. 1: ML over each reference (rows), per class balance (columns), per setting (lines).
    fig, axes = _figure(len(ML_REFERENCES), len(balances), (15, 11), squeeze=False)
    for j, (balance, n_fg) in enumerate(balances.items()):
        for i, ref in enumerate(ML_REFERENCES):
            for sweep, curves in by_balance[balance]:
                ratio = _plot_ratio(axes[i, j], curves, "ML", ref, sweep)
                p_star = amplify_suppress_verdict(ps, ratio)[1]
                if np.isfinite(p_star):
                    axes[i, j].plot([p_star], [1], "o", color=_setting_style(sweep)["color"], markersize=6)
            title = f"swept class {balance} ({n_fg}/{n} px)" if i == 0 else ""
            _ratio_axes(axes[i, j], ps, title, f"|∂L_ML| / |∂L_{ref.split()[0]}|", band=False)
    fig.suptitle(
        "Fig. 1 claim: ML's gradient at the swept pixel over CE's, Dice's and the additive loss's (λ = 0.5), rows. "
        "> 1: ML amplifies, < 1: suppresses;\ndot: where it crosses 1. Binary, N = "
        f"{n}. The same ratio holds w.r.t. p and w.r.t. the logit (∂L/∂z = p(1 − p)·∂L/∂p for every loss).",
        fontsize=11,
    )
    _figure_legend(fig, axes[0, 0], band=False)
    paths.append(_save(fig, out / "claims_ml_ratio.png", 0.07))

    # Fig. 1 and (d): each loss's gradient w.r.t. p (top) and the logit (bottom), balanced classes.
    shown = [(s, c) for s, c in balanced if s.swept == "batch" or s.rest_p in (REST_PS[0], REST_PS[-1])]
    fig, axes = _figure(2, len(shown), (15, 8.5), squeeze=False)
    for j, (sweep, curves) in enumerate(shown):
        moving = _setting_style(sweep)["label"]
        for i, (key, wrt, ylabel) in enumerate(
            (("grad", "p", "|∂L/∂p_i|"), ("grad_logit", "the logit", "|∂L/∂z_i,y|  (true-class logit)"))
        ):
            for label in GRADIENT_LOSSES:
                axes[i, j].plot(ps, np.abs(curves[label][key]), label=label, color=LOSS_COLOURS[label])
            axes[i, j].set(title=f"w.r.t. {wrt}; {moving}", ylabel=ylabel)
            _p_axis(axes[i, j], ps)
            _log_y(axes[i, j])
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=5, frameon=False, fontsize=10)
    fig.suptitle(f"Gradient at the swept pixel i, w.r.t. its probability and its logit (binary, N = {n}, balanced)")
    paths.append(_save(fig, out / "claims_gradients.png", 0.05))

    # Fig. 2/5: CAML over ML per reading of p̄ (columns) and gradient path through α (rows), balanced classes.
    readings, grads = get_args(PBar), get_args(AlphaGrad)
    fig, axes = _figure(len(grads), len(readings), (4.6 * len(readings) + 1, 11), squeeze=False, sharey=True)
    for i, grad in enumerate(grads):
        for j, pbar in enumerate(readings):
            for sweep, curves in balanced:
                _plot_ratio(axes[i, j], curves, caml_label(pbar, grad), "ML", sweep)
            _ratio_axes(axes[i, j], ps, f"p̄ = {pbar}, α-grad = {grad}", "|∂L_CAML| / |∂L_ML|", band=True)
    fig.suptitle(
        "Fig. 2/5 claims: CAML's gradient at the swept pixel over ML's, per reading of p̄ (columns) and gradient path "
        f"through α (rows).\nBinary, N = {n}, balanced classes. Claimed: > 1 for hard pixels, ≈ 1 for confident ones.",
        fontsize=11,
    )
    _figure_legend(fig, axes[0, 0], band=True, extra=[_rising_handle("CAML")])
    paths.append(_save(fig, out / "claims_caml_readings.png", 0.07))

    # Fig. 2/5 under class balance, default CAML.
    fig, axes = _figure(1, len(balances), (15, 5.4), squeeze=False, sharey=True)
    for j, (balance, n_fg) in enumerate(balances.items()):
        for sweep, curves in by_balance[balance]:
            _plot_ratio(axes[0, j], curves, "CAML", "ML", sweep)
        _ratio_axes(axes[0, j], ps, f"swept class {balance} ({n_fg}/{n} px)", "|∂L_CAML| / |∂L_ML|", band=True)
    fig.suptitle(f"Fig. 2/5 claims under class balance: default CAML (p̄ = true_class, α-grad = pbar) over ML; N = {n}")
    _figure_legend(fig, axes[0, 0], band=True, extra=[_rising_handle("CAML")])
    paths.append(_save(fig, out / "claims_caml_balance.png", 0.17))

    # The known property, every pixel at p: CAML's CE factor, its inputs, and what its gradient tends to.
    ((_, curves),) = [(s, c) for s, c in balanced if s.swept == "batch"]
    fig, axes = _figure(1, 3, (16, 5.4))
    for k, pbar in enumerate(readings):
        factor = curves[caml_label(pbar, "pbar")]["value"] / curves["Dice"]["value"]
        verdict, p_min = not_monotone_verdict(ps, factor)
        shape = f"minimum at p = {p_min:g}" if verdict == HOLDS else "decreasing: no minimum inside"
        line = axes[0].plot(ps, factor, ("-", "--", ":", "-.")[k % 4], linewidth=2, label=f"p̄ = {pbar}: {shape}")[0]
        if verdict == HOLDS:
            axes[0].plot([p_min], [factor.min()], "o", color=line.get_color())
    axes[0].set(title="CAML's CE factor L_CAML / L_Dice = L_CE^α (dot: minimum)", ylabel="L_CE^α")
    default = curves["CAML"]
    for key, label, style in (
        ("alpha", "α = (1 − p̄)^D", "-"),
        ("p_bar", "p̄ (true_class)", "--"),
        ("dice_coef", "D = 1 − L_Dice (≈ p̄ here)", ":"),
        ("ce", "L_CE", "-."),
    ):
        axes[1].plot(ps, default[key], style, linewidth=2, label=label)
    axes[1].set(title="Default CAML's inputs", ylabel="value", ylim=(0, 2.5))
    for ref in ("ML", "Dice"):
        axes[2].plot(
            ps,
            _magnitude_ratio(curves, "CAML", ref),
            label=f"|∂L_CAML| / |∂L_{ref}|",
            color=LOSS_COLOURS[ref],
            linewidth=2,
        )
    axes[2].axhline(1, color="grey", linewidth=0.9)
    axes[2].axhspan(1 - APPROX_TOL, 1 + APPROX_TOL, color="grey", alpha=0.25, linewidth=0, label=f"1 ± {APPROX_TOL:g}")
    axes[2].set(title="Default CAML's gradient at a pixel, over ML's and Dice's", ylabel="gradient ratio")
    _log_y(axes[2])
    for ax in axes:
        _p_axis(ax, ps, "p, every pixel's true-class probability (logit scale)")
        ax.legend(fontsize=9)
    fig.suptitle(
        f"Every pixel at p (binary, N = {n}, balanced): as p̄ → 1, α → 0 and L_CE^α → 1, so CAML → Dice "
        "(true_class and per_pixel coincide here)"
    )
    paths.append(_save(fig, out / "claims_caml_limit.png", 0))
    return paths


# --- overlays (Fig. 3/4) --------------------------------------------------------------------------------------


def _load_weights(model: torch.nn.Module, ckpt: str | Path) -> tuple[torch.nn.Module, str]:
    """A copy of ``model`` with the checkpoint's weights, and the loss label of the run it belongs to."""
    import copy

    inspect_checkpoint(ckpt)  # a readable error for a missing or corrupt file
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    model = copy.deepcopy(model)
    model.load_state_dict(state, strict=False)
    identity = RunFolder(Path(ckpt).parent.parent).identity()  # <run folder>/checkpoints/<name>.ckpt
    label = identity.keys.loss if identity is not None else Path(ckpt).stem
    return model.eval(), str(label)


def _image_miou(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None) -> float:
    valid = np.ones_like(target, dtype=bool) if ignore_index is None else target != ignore_index
    ious = []
    for c in range(num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum()
        if union:
            ious.append((p & t).sum() / union)
    return float(np.mean(ious)) if ious else float("nan")


def overlay_figure(
    config_args: Sequence[str],
    ckpt_a: str | Path,
    ckpt_b: str | Path,
    out: str | Path,
    num_images: int = 4,
    split: str = "test",
) -> Path:
    """Write ``overlays.png``: image | ground truth | prediction A | prediction B for ``num_images`` images.

    ``config_args`` are CLI arguments (``--config base.yaml --config data/…yaml``, overrides) naming the data
    and the model architecture; the weights come from the two checkpoints.
    """
    from .callbacks.overlays import PALETTE, colourise, image_to_rgb
    from .cli import build_cli

    cli = build_cli([*config_args, "--trainer.logger=false"], run=False)
    dm, module = cli.datamodule, cli.model
    dm.setup(split if split != "val" else "validate")
    loader = {"test": dm.test_dataloader, "val": dm.val_dataloader, "train": dm.train_dataloader}[split]()
    images, masks = [], []
    for batch in loader:
        images.append(batch["image"])
        masks.append(batch["mask"])
        if sum(len(x) for x in images) >= num_images:
            break
    images, masks = torch.cat(images)[:num_images], torch.cat(masks)[:num_images]
    (model_a, label_a), (model_b, label_b) = _load_weights(module, ckpt_a), _load_weights(module, ckpt_b)
    with torch.no_grad():
        pred_a, pred_b = (predicted_classes(model(images)).numpy() for model in (model_a, model_b))
    num_classes = module.hparams.num_classes
    ignore_index = module.hparams.ignore_index

    n = len(images)
    fig, axes = _figure(n, 4, (10, 2.6 * n + 0.6), squeeze=False)
    for i in range(n):
        target = masks[i].numpy()
        panels = [
            (image_to_rgb(images[i].numpy()), "image"),
            (colourise(target, ignore_index), "ground truth"),
            (
                colourise(pred_a[i], None),
                f"{label_a} (mIoU {_image_miou(pred_a[i], target, num_classes, ignore_index):.3f})",
            ),
            (
                colourise(pred_b[i], None),
                f"{label_b} (mIoU {_image_miou(pred_b[i], target, num_classes, ignore_index):.3f})",
            ),
        ]
        for ax, (panel, title) in zip(axes[i], panels, strict=True):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    from matplotlib.patches import Patch

    handles = [Patch(color=PALETTE[c % len(PALETTE)] / 255, label=name) for c, name in enumerate(module.class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "overlays.png"
    fig.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m lightning_seg.figures", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gradients", help="loss and |∂L/∂p| vs p (Fig. 1), CAML vs ML (Fig. 2/5)")
    g.add_argument("--out", required=True)
    g.add_argument("--size", type=int, default=4, help="the batch is one size×size binary image (default 4)")
    g.add_argument("--rest-p", type=float, default=0.7, help="true-class probability of the other pixels")
    c = sub.add_parser("claims", help="the paper's gradient claims (Fig. 1, 2/5) measured across settings")
    c.add_argument("--out", required=True)
    c.add_argument("--points", type=int, default=99, help="grid points in [0.01, 0.99] (then 0.995, 0.999)")
    c.add_argument(
        "--size", type=int, default=CLAIM_SIZE, help=f"the batch is one size×size binary image (default {CLAIM_SIZE})"
    )
    o = sub.add_parser("overlays", help="predictions of two checkpoints side by side (Fig. 3/4)")
    o.add_argument("--config", action="append", required=True, help="config file(s), as for lightning-seg")
    o.add_argument("--ckpt-a", required=True)
    o.add_argument("--ckpt-b", required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--num-images", type=int, default=4)
    o.add_argument("--split", choices=("train", "val", "test"), default="test")
    args, extra = parser.parse_known_args(argv)
    if args.command in ("gradients", "claims") and extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    if args.command == "gradients":
        sweep = Sweep(size=args.size, rest_p=args.rest_p)
        paths = plot_gradients(gradient_curves(sweep=sweep), args.out, sweep)
    elif args.command == "claims":
        results = claim_curves(claim_grid(args.points), args.size, progress=True)
        rows = claims_table(results)
        paths = [*plot_claims(results, args.out), write_claims_csv(rows, Path(args.out) / "claims.csv")]
        paths.append(Path(args.out) / "claims.md")
        paths[-1].write_text(claims_markdown(rows))
    else:
        config_args = [a for c in args.config for a in ("--config", c)] + list(extra)  # extra: CLI overrides
        paths = [overlay_figure(config_args, args.ckpt_a, args.ckpt_b, args.out, args.num_images, args.split)]
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
