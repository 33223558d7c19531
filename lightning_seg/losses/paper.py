"""The losses of Yokoi & Hotta, "Multiplicative Loss for Enhancing Semantic Segmentation in Medical and
Cellular Images" (arXiv:2510.12258, with its erratum), and the two baselines they are compared with.

Notation: softmax probabilities ``p``, one-hot targets ``t``, pixel ``i`` running over every non-ignored
pixel of the batch, ``N`` their number, ``C`` the number of classes (background included).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .base import AbsentClasses, LossTerms, SegmentationLoss, confidence_exponent, register_loss, safe_pow

PBar = Literal["true_class", "all_classes", "per_pixel", "max_class"]
#: The readings of ``p̄`` (see :class:`ConfidenceAdaptiveMultiplicative`).
PBARS: tuple[str, ...] = ("true_class", "all_classes", "per_pixel", "max_class")
AlphaGrad = Literal["pbar", "none", "full"]


@register_loss("ce")
class CrossEntropy(SegmentationLoss):
    """Cross entropy, eq. (2): ``L_CE = -(1/N) Σ_i log p[i, y_i]``."""

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        return terms.ce, None


@register_loss("dice")
class Dice(SegmentationLoss):
    """Batch soft Dice loss, eq. (3-4): ``L_Dice = 1 - (1/C) Σ_c (2 Σ_i t_ic p_ic + s) / (Σ_i t_ic + Σ_i p_ic + s)``.

    The sums run over all pixels of the batch (batch Dice, not per image) and the mean over all C
    classes, background included. ``s`` is ``smooth`` (1 by default); see :class:`SegmentationLoss`
    for the absent-class policy.
    """

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        return terms.dice_loss, None


@register_loss("additive")
class Additive(SegmentationLoss):
    """Weighted sum, eq. (1): ``L = λ·L_Dice + (1 - λ)·L_CE``; the paper's grid is λ ∈ {0.3, 0.5, 0.7}."""

    def __init__(self, lam: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}")
        self.lam = float(lam)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        return self.lam * terms.dice_loss + (1.0 - self.lam) * terms.ce, None

    def extra_repr(self) -> str:
        return f"lam={self.lam}, " + super().extra_repr()


@register_loss("ml")
class Multiplicative(SegmentationLoss):
    """Multiplicative Loss (ML), eq. (5): ``L_ML = L_Dice · L_CE``."""

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        return terms.dice_loss * terms.ce, None


@register_loss("caml")
class ConfidenceAdaptiveMultiplicative(SegmentationLoss):
    """Confidence-Adaptive Multiplicative Loss (CAML), eq. (13) of the erratum:

    ``L_CAML = L_Dice · L_CE^α``,  ``α = (1 - p̄)^D``,  ``D = 1 - L_Dice``.

    Args:
        pbar: what ``p̄`` is.
            ``"true_class"`` (default): ``p̄ = (1/N) Σ_i p[i, y_i]``, the true-class probability averaged
            over the batch; the pre-erratum text's "predicted probability for the true class" made a
            batch scalar as the erratum requires.
            ``"all_classes"``: the erratum read literally, the mean of ``p`` over all pixels *and* classes.
            Under a softmax that is exactly ``1/C`` for every input, so α depends on D alone.
            ``"per_pixel"``: the pre-erratum eq. (10), ``α_i = (1 - p[i, y_i])^D`` applied inside the CE
            mean: ``L = L_Dice · (1/N) Σ_i (-log p[i, y_i])^{α_i}``.
            ``"max_class"``: the label-free reading of the paper's "average prediction confidence",
            ``p̄ = (1/N) Σ_i max_c p_ic``, the batch mean of the largest class probability.
        alpha_grad: which gradients flow through α.
            ``"pbar"`` (default): through ``p̄`` with ``D`` held constant, as eq. (14-15) differentiate.
            ``"none"``: α is a constant per step (detached).
            ``"full"``: through ``p̄`` and ``D``.

    Gradient through ``p̄``: ``∂L/∂p̄ = L_Dice · L_CE^α · log L_CE · ∂α/∂p̄`` with ``∂α/∂p̄ = -D (1 - p̄)^(D-1) < 0``,
    so while ``L_CE < 1`` the α path pushes ``p̄`` *down* and while ``L_CE > 1`` up. With ``true_class`` that
    path moves the true class's probability, like the CE term. With ``max_class`` it moves each pixel's most
    probable class whatever the label: ``∂p̄/∂x_ic = p_ik (δ(c = k) - p_ic) / N``, ``k`` the pixel's arg-max, a
    label-free push towards confident predictions while ``L_CE > 1`` and away from them (towards higher entropy)
    once ``L_CE < 1``; ``alpha_grad="none"`` removes it and keeps only the label-driven gradients of ``L_Dice``
    and ``L_CE``. With ``all_classes`` ``p̄ = 1/C`` has no gradient, so ``"pbar"`` and ``"none"`` coincide.
        r: if given, ``D`` in the exponent is replaced by this constant (the fixed-r ablation, Tab. 4);
            see :class:`CAMLFixedR`.

    Numerics: ``α``'s gradient is taken with ``1 - p̄`` (or ``1 - p_i``) kept in ``[1e-6, 1]`` (its value is exact;
    see :func:`.base.confidence_exponent`), and ``L_CE`` (or the per-pixel CE) is bounded below by ``1e-6``
    before the fractional power, so that ``∂L/∂α = L_Dice · L_CE^α · log L_CE`` stays finite at perfect
    predictions; below that bound the CE factor stops passing gradient, where its value is < 1e-6 anyway.
    """

    def __init__(
        self,
        pbar: PBar = "true_class",
        alpha_grad: AlphaGrad = "pbar",
        r: float | None = None,
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        absent_classes: AbsentClasses = "include",
        sync_stats: bool = True,
    ) -> None:
        super().__init__(ignore_index=ignore_index, smooth=smooth, absent_classes=absent_classes, sync_stats=sync_stats)
        if pbar not in PBARS:
            raise ValueError(f"pbar must be 'true_class', 'all_classes', 'per_pixel' or 'max_class', got {pbar!r}")
        if alpha_grad not in ("pbar", "none", "full"):
            raise ValueError(f"alpha_grad must be 'pbar', 'none' or 'full', got {alpha_grad!r}")
        if r is not None and r < 0:
            raise ValueError(f"r must be ≥ 0, got {r}")
        self.pbar = pbar
        self.uses_max_prob = pbar == "max_class"
        self.alpha_grad = alpha_grad
        self.r = None if r is None else float(r)

    def exponent(self, terms: LossTerms) -> Tensor | float:
        """The exponent of ``1 - p̄``: ``D`` (held constant unless ``alpha_grad="full"``) or the fixed ``r``."""
        if self.r is not None:
            return self.r
        d = terms.dice_coef
        return d if self.alpha_grad == "full" else d.detach()

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        exponent = self.exponent(terms)
        if self.pbar == "per_pixel":
            pt_map = terms.pt_map if self.alpha_grad != "none" else terms.pt_map.detach()
            alpha_map = confidence_exponent(pt_map, exponent)
            # Both means in one reduction over the processes.
            sums = terms.reduce(
                torch.stack([safe_pow(terms.ce_map, alpha_map).mul(terms.valid).sum(), (alpha_map * terms.valid).sum()])
            )
            ce_pow, alpha_mean = (sums / terms.n_valid).unbind()
            return terms.dice_loss * ce_pow, alpha_mean
        if self.pbar == "true_class":
            p_bar = terms.p_bar
        elif self.pbar == "max_class":
            p_bar = terms.max_prob
        else:
            p_bar = terms.prob_sum.sum() / (terms.n_valid * terms.num_classes)
        if self.alpha_grad == "none":
            p_bar = p_bar.detach()
        alpha = confidence_exponent(p_bar, exponent)
        return terms.dice_loss * safe_pow(terms.ce, alpha), alpha

    def extra_repr(self) -> str:
        r = "" if self.r is None else f"r={self.r}, "
        return f"pbar={self.pbar!r}, alpha_grad={self.alpha_grad!r}, {r}" + super().extra_repr()


@register_loss("caml_fixed_r")
class CAMLFixedR(ConfidenceAdaptiveMultiplicative):
    """CAML with the Dice exponent replaced by a constant (the paper's Tab. 4 ablation):
    ``L = L_Dice · L_CE^α``, ``α = (1 - p̄)^r``, r ∈ {1, 2, 3, 4, 5} in the paper.
    """

    def __init__(
        self,
        r: float,
        pbar: PBar = "true_class",
        alpha_grad: AlphaGrad = "pbar",
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        absent_classes: AbsentClasses = "include",
        sync_stats: bool = True,
    ) -> None:
        super().__init__(
            pbar=pbar,
            alpha_grad=alpha_grad,
            r=r,
            ignore_index=ignore_index,
            smooth=smooth,
            absent_classes=absent_classes,
            sync_stats=sync_stats,
        )
