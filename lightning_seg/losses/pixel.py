"""Pixel-level losses of the survey (Azad et al., "Loss Functions in the Era of Semantic Segmentation: A Survey
and Outlook", arXiv:2312.05391, sec. 2.1): focal, TopK and class-weighted cross entropy.

Notation as in :mod:`.paper`: softmax probabilities ``p``, one-hot targets ``t``, ``p_t = p[i, y_i]`` the
true-class probability of pixel ``i``, ``N`` the number of non-ignored pixels of the batch, ``C`` the number of
classes. Every mean runs over the non-ignored pixels of the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import EPS, LossTerms, SegmentationLoss, register_loss

#: Class-weighting schemes computed from the batch's labels (see :class:`WeightedCrossEntropy`).
FREQUENCY_WEIGHTINGS = ("inverse_frequency", "inverse_sqrt_frequency")


def frac_pow(x: Tensor, exponent: float) -> Tensor:
    """``x ** exponent`` for ``x ≥ 0`` with a finite gradient at ``x = 0`` for any exponent ``> 0``.

    Exponents ``≥ 1`` are plain powers. Below 1 the derivative ``γ x^(γ-1)`` is infinite at 0, so the power is
    continued linearly below ``EPS``: ``x · EPS^(γ-1)`` (continuous at ``EPS``, exactly 0 at 0, slope
    ``EPS^(γ-1)``). Above ``EPS`` the value and gradient are exact.
    """
    if exponent >= 1.0:
        return x.clamp_min(0.0).pow(exponent)
    big = x > EPS
    safe = torch.where(big, x, torch.ones_like(x))
    return torch.where(big, safe.pow(exponent), x * EPS ** (exponent - 1.0))


def check_class_weights(name: str, weights: Sequence[float] | None) -> tuple[float, ...] | None:
    """Validate an optional list of non-negative, finite per-class weights (not all zero)."""
    if weights is None:
        return None
    if isinstance(weights, str | bytes) or not isinstance(weights, Sequence | Tensor):
        raise ValueError(f"{name} must be a sequence of per-class weights, got {weights!r}")
    values = tuple(float(w) for w in weights)
    if len(values) < 2:
        raise ValueError(f"{name} needs one weight per class (at least 2), got {len(values)}")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ValueError(f"{name} must be finite and ≥ 0, got {values}")
    if not any(w > 0 for w in values):
        raise ValueError(f"{name} must have at least one positive weight, got {values}")
    return values


def class_weight_tensor(name: str, weights: tuple[float, ...], terms: LossTerms) -> Tensor:
    """The weights as a tensor on the terms' device/dtype; raises if their number is not C."""
    if len(weights) != terms.num_classes:
        raise ValueError(f"{name} has {len(weights)} weights but the logits have {terms.num_classes} classes")
    return torch.as_tensor(weights, dtype=terms.logits.dtype, device=terms.logits.device)


def pixel_class_weight(weights: Tensor, terms: LossTerms) -> Tensor:
    """``w[y_i]`` as an N×H×W map (0 at ignored pixels)."""
    return weights[terms.target] * terms.valid


@register_loss("focal")
class Focal(SegmentationLoss):
    """Focal loss (Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object Detection", ICCV 2017,
    arXiv:1708.02002), in its softmax form (survey eq. 4):

    ``L_focal = -(1/N) Σ_i α_{y_i} (1 - p_t)^γ log p_t``.

    ``γ = 2`` is the paper's default; ``γ = 0`` with no ``alpha`` is plain CE. Lin et al.'s ``α = 0.25`` belongs to
    their binary sigmoid form; here ``alpha`` is an optional list of C per-class weights (``None``: all 1).
    The mean runs over the non-ignored pixels of the batch, as ``segmentation_models_pytorch``'s
    ``softmax_focal_loss_with_logits`` (the test oracle) does.

    Args:
        gamma: focusing parameter ``γ ≥ 0``.
        alpha: optional per-class weights ``α_c ≥ 0`` (length C).
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number ≥ 0, got {gamma}")
        self.gamma = float(gamma)
        self.alpha = check_class_weights("alpha", alpha)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        modulating = frac_pow(1.0 - terms.pt_map, self.gamma) if self.gamma > 0 else torch.ones_like(terms.pt_map)
        pixel_loss = modulating * terms.ce_map
        if self.alpha is not None:
            pixel_loss = pixel_loss * pixel_class_weight(class_weight_tensor("alpha", self.alpha, terms), terms)
        return terms.valid_mean(pixel_loss), None

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, " + super().extra_repr()


@register_loss("topk")
class TopK(SegmentationLoss):
    """TopK loss / online bootstrapped cross entropy (Wu, Shen & van den Hengel, "Bridging Category-level and
    Instance-level Semantic Image Segmentation", arXiv:1605.06885, 2016; survey eq. 3):

    ``L_TopK = -(1/|K|) Σ_{i ∈ K} log p_t``,

    ``K`` the ``k`` % of non-ignored pixels of the batch with the largest CE (lowest ``p_t``),
    ``|K| = max(1, ⌊N·k/100⌋)``. Under several processes the selection runs over the concatenated batch (its
    CE map is gathered: one value per pixel). ``k = 10`` is nnU-Net's ``TopKLoss`` default (the survey gives no value);
    ``k = 100`` is plain CE. The pixel set is chosen over the whole batch and the loss is the mean over it.
    Oracle: NumPy float64 (sort and mean).

    Args:
        k: percentage of hardest pixels kept, in ``(0, 100]``.
    """

    def __init__(self, k: float = 10.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(k) and 0.0 < k <= 100.0):
            raise ValueError(f"k must be a percentage in (0, 100], got {k}")
        self.k = float(k)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        n_valid = int(terms.class_counts.sum())
        n_keep = max(1, int(n_valid * self.k / 100.0))
        # CE ≥ 0, so ignored pixels (set to -1) are never picked before a valid one.
        ce = terms.cat(terms.ce_map.masked_fill(~terms.valid, -1.0).flatten())
        top = torch.topk(ce, min(n_keep, ce.numel()), sorted=False).values
        top = torch.where(top >= 0, top, torch.zeros_like(top))
        return top.sum() / n_keep, None

    def extra_repr(self) -> str:
        return f"k={self.k}, " + super().extra_repr()


@register_loss("weighted_ce")
class WeightedCrossEntropy(SegmentationLoss):
    """Class-weighted cross entropy (survey eq. 2, Azad et al., arXiv:2312.05391; class-frequency balancing as in
    the ``w_c`` term of Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI 2015, arXiv:1505.04597):

    ``L_WCE = -Σ_i w_{y_i} log p_t / Σ_i w_{y_i}``,

    normalised by the summed weights like ``torch.nn.functional.cross_entropy(weight=...)`` (the test
    oracle), so the loss is a weighted mean and ``w = 1`` gives plain CE.

    Args:
        weight: a list of C fixed class weights, or a scheme computed from the non-ignored pixels of each
            batch (``n_c`` pixels of class ``c``, ``N`` in all, ``C`` classes):
            ``"inverse_frequency"`` (default, the survey's choice): ``w_c = N / (C · n_c)``, which makes every
            class present in the batch contribute equally (``L = mean over present c of the class's mean CE``);
            ``"inverse_sqrt_frequency"``: ``w_c = sqrt(N / (C · n_c))``. Absent classes get weight 0 (they have
            no pixel to weight).
    """

    def __init__(self, weight: Sequence[float] | str = "inverse_frequency", **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(weight, str):
            if weight not in FREQUENCY_WEIGHTINGS:
                raise ValueError(
                    f"weight must be a list of class weights or one of {FREQUENCY_WEIGHTINGS}, got {weight!r}"
                )
            self.weight: str | tuple[float, ...] = weight
        else:
            checked = check_class_weights("weight", weight)
            assert checked is not None
            self.weight = checked

    def class_weights(self, terms: LossTerms) -> Tensor:
        """The C weights used for this batch (detached)."""
        if not isinstance(self.weight, str):
            return class_weight_tensor("weight", self.weight, terms)
        counts = terms.class_counts
        num_classes = counts.numel()
        ratio = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1.0)), torch.zeros_like(counts))
        return ratio if self.weight == "inverse_frequency" else ratio.sqrt()

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        w_map = pixel_class_weight(self.class_weights(terms), terms)
        weighted, total = terms.reduce(torch.stack([(w_map * terms.ce_map).sum(), w_map.sum()])).unbind()
        # With no weighted pixel (all ignored) the numerator is 0 too: the loss is 0.
        safe_total = torch.where(total > 0, total, torch.ones_like(total))
        return weighted / safe_total, None

    def extra_repr(self) -> str:
        return f"weight={self.weight!r}, " + super().extra_repr()
