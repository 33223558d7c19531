"""Compound losses: Combo, Exponential-Logarithmic and Unified Focal from the survey (Azad et al.,
arXiv:2312.05391, sec. 2.4), GDL + boundary (Kervadec et al.'s training objective), and the CE + region-size terms of Liu et al.
("Do We Really Need Dice? The Hidden Region-Size Biases of Segmentation Losses").

Notation as in :mod:`.paper` and :mod:`.region`: ``p_ic`` softmax probability, ``t_ic`` one-hot target,
``p_t = p[i, y_i]``, ``N`` non-ignored pixels of the batch, ``C`` classes (background = class 0).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import EPS, LossTerms, SegmentationLoss, register_loss
from .boundary import Boundary
from .pixel import check_class_weights, class_weight_tensor, frac_pow, pixel_class_weight
from .region import check_nonneg, check_unit, class_mean, confusion_sums

#: Probability clip of the Combo loss's ``log(1 - p)`` (Keras' ``K.epsilon()`` in the authors' code).
COMBO_CLIP = 1e-7
#: Smoothing of Liu et al.'s region proportions (their ``EPS``).
REGION_EPS = 1e-10


@register_loss("combo")
class Combo(SegmentationLoss):
    """Combo loss (Taghanaki, Zheng, Zhou, Georgescu, Sharma, Xu, Comaniciu & Hamarneh, "Combo Loss: Handling Input
    and Output Imbalance in Multi-Organ Segmentation", Computerized Medical Imaging and Graphics 75, 2019,
    arXiv:1805.02798; survey eq. 32):

    ``L_combo = α · L_mBCE - (1 - α) · (1/C) Σ_c Dice_c``,
    ``L_mBCE = -(1/(N·C)) Σ_i Σ_c [β t_ic log p_ic + (1 - β)(1 - t_ic) log(1 - p_ic)]``,

    ``Dice_c`` the batch soft Dice of :class:`.paper.Dice` (``smooth = 1`` as in the authors' code). ``β > 0.5``
    penalises false negatives more, ``β < 0.5`` false positives; ``α = β = 0.5`` are the authors' defaults.
    ``log(1 - p)`` uses ``p`` clipped to ``1 - 1e-7`` as their code does (``log p`` is exact). The paper sums
    Dice over classes; we average (its sum / C), like every other region term here, and the authors' released
    code flattens all channels into one Dice. The loss is negative near the optimum (down to ``-(1 - α)``).
    Oracle: NumPy float64.

    Args:
        alpha: weight ``α ∈ [0, 1]`` of the cross-entropy term.
        beta: weight ``β ∈ [0, 1]`` of the positive (false-negative) part of the cross entropy.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha = check_unit("alpha", alpha)
        self.beta = check_unit("beta", beta)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        log_p = terms.log_probs
        log_1mp = torch.log(-torch.expm1(log_p.clamp_max(math.log1p(-COMBO_CLIP))))
        t = terms.onehot
        valid = terms.valid.unsqueeze(1).to(log_p.dtype)
        bce = -(self.beta * t * log_p + (1.0 - self.beta) * (1.0 - t) * log_1mp) * valid
        bce = terms.sum(bce) / (terms.n_valid * log_p.shape[1])
        return self.alpha * bce - (1.0 - self.alpha) * terms.dice_coef, None

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, " + super().extra_repr()


@register_loss("exp_log")
class ExpLog(SegmentationLoss):
    """Exponential Logarithmic loss (Wong, Moradi, Tang & Syeda-Mahmood, "3D Segmentation with Exponential
    Logarithmic Loss for Highly Unbalanced Object Sizes", MICCAI 2018, arXiv:1809.00076; survey eq. 33-35):

    ``L_Exp = w_Dice · (1/C) Σ_c (-ln Dice_c)^γ_Dice + w_Cross · (1/N) Σ_i w_{y_i} (-ln p_t)^γ_Cross``,
    ``w_l = ((Σ_k f_k) / f_l)^0.5``,

    ``Dice_c`` the batch soft Dice with ``ε = smooth = 1`` (the paper's smoothing), ``f_k`` the frequency of
    label ``k``. Defaults are the paper's: ``w_Dice = 0.8, w_Cross = 0.2, γ_Dice = γ_Cross = 0.3``. The paper's
    ``f_k`` are label frequencies; by default they are counted on the batch's non-ignored pixels, or given
    as ``class_frequencies`` (e.g. over the training set). Powers below 1 use :func:`.pixel.frac_pow` (exact
    above 1e-6, finite slope below). The class mean follows ``absent_classes``. Oracle: NumPy float64.

    Args:
        w_dice: weight of the Dice term, ≥ 0.
        w_cross: weight of the cross-entropy term, ≥ 0.
        gamma_dice: exponent ``γ_Dice > 0``.
        gamma_cross: exponent ``γ_Cross > 0``.
        class_frequencies: optional C label frequencies (counts or proportions); ``None`` counts the batch.
    """

    def __init__(
        self,
        w_dice: float = 0.8,
        w_cross: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_cross: float = 0.3,
        class_frequencies: Sequence[float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.w_dice = check_nonneg("w_dice", w_dice)
        self.w_cross = check_nonneg("w_cross", w_cross)
        for name, value in (("gamma_dice", gamma_dice), ("gamma_cross", gamma_cross)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        self.gamma_dice = float(gamma_dice)
        self.gamma_cross = float(gamma_cross)
        self.class_frequencies = check_class_weights("class_frequencies", class_frequencies)
        if self.class_frequencies is not None and min(self.class_frequencies) <= 0:
            raise ValueError(f"class_frequencies must be > 0, got {self.class_frequencies}")

    def label_weights(self, terms: LossTerms) -> Tensor:
        """``w_l = (Σ_k f_k / f_l)^0.5`` (C), 0 for a class with no pixel when counted on the batch."""
        if self.class_frequencies is not None:
            freq = class_weight_tensor("class_frequencies", self.class_frequencies, terms)
        else:
            freq = terms.class_counts
        ratio = freq.sum() / freq.clamp_min(EPS)
        return torch.where(freq > 0, ratio.sqrt(), torch.zeros_like(ratio))

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        neg_log_dice = -torch.log(terms.dice_per_class.clamp_min(EPS))
        dice_term = class_mean(frac_pow(neg_log_dice, self.gamma_dice), terms, self.absent_classes)
        w_map = pixel_class_weight(self.label_weights(terms), terms)
        cross_term = terms.valid_mean(w_map * frac_pow(terms.ce_map, self.gamma_cross))
        return self.w_dice * dice_term + self.w_cross * cross_term, None

    def extra_repr(self) -> str:
        return (
            f"w_dice={self.w_dice}, w_cross={self.w_cross}, gamma_dice={self.gamma_dice}, "
            f"gamma_cross={self.gamma_cross}, class_frequencies={self.class_frequencies}, " + super().extra_repr()
        )


@register_loss("unified_focal")
class UnifiedFocal(SegmentationLoss):
    """Asymmetric Unified Focal loss (Yeung, Sala, Schönlieb & Rundo, "Unified Focal Loss: Generalising Dice and
    Cross Entropy-based Losses to Handle Class Imbalanced Medical Image Segmentation", Computerized Medical
    Imaging and Graphics 95, 2022, arXiv:2102.04525; survey eq. 36):

    ``L_aUF = λ L_maF + (1 - λ) L_maFT``,
    ``L_maF = (1/N) Σ_i [ (1 - δ)(1 - p_i0)^γ (-t_i0 log p_i0) + δ Σ_{c≥1} (-t_ic log p_ic) ]``,
    ``L_maFT = (1/C) [ (1 - mTI_0) + Σ_{c≥1} (1 - mTI_c)^(1-γ) ]``,
    ``mTI_c = (TP_c + ε) / (TP_c + δ FN_c + (1 - δ) FP_c + ε)``.

    Class 0 is the background (its focal term suppressed), every other class a "rare" foreground class (its
    focal Tversky term enhanced); the paper and the authors' code define the binary case, which this reduces
    to for C = 2. ``λ = 0.5, δ = 0.6, γ = 0.5`` are the authors' defaults (``asym_unified_focal_loss``),
    ``ε = 1e-7`` their smoothing. ``mTI_c`` uses batch-level sums (the code sums per image; identical for a
    batch of one). ``λ`` weighs the focal part as in the paper's eq. (the authors' code swaps them; identical at
    the default 0.5). Oracles: NumPy float64 transcription of the authors' code, and ``monai.losses``'
    ``AsymmetricFocalTverskyLoss`` / ``AsymmetricFocalLoss`` (whose focal mean also divides by the 2 channels).

    Args:
        lam: ``λ ∈ [0, 1]``, weight of the focal part.
        delta: ``δ ∈ [0, 1]``, weight of the foreground classes / false negatives.
        gamma: ``γ ∈ [0, 1)``, background suppression in the focal part and foreground enhancement ``1 - γ``.
    """

    def __init__(self, lam: float = 0.5, delta: float = 0.6, gamma: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lam = check_unit("lam", lam)
        self.delta = check_unit("delta", delta)
        self.gamma = check_unit("gamma", gamma, open_high=True)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        eps = 1e-7
        background = (terms.target == 0) & terms.valid
        focal_weight = torch.where(
            background,
            (1.0 - self.delta) * frac_pow(1.0 - terms.pt_map, self.gamma),
            torch.full_like(terms.pt_map, self.delta),
        )
        focal = terms.valid_mean(focal_weight * terms.ce_map)
        tp, fp, fn = confusion_sums(terms)
        mti = (tp + eps) / (tp + self.delta * fn + (1.0 - self.delta) * fp + eps)
        per_class = torch.cat([1.0 - mti[:1], frac_pow(1.0 - mti[1:], 1.0 - self.gamma)])
        tversky = per_class.mean()
        return self.lam * focal + (1.0 - self.lam) * tversky, None

    def extra_repr(self) -> str:
        return f"lam={self.lam}, delta={self.delta}, gamma={self.gamma}, " + super().extra_repr()


def region_proportions(terms: LossTerms, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-image class proportions ``(τ, p̂)`` (N×C) of the labels and of ``softmax(T · logits)`` over the
    non-ignored pixels, smoothed by ``1e-10`` as in Liu et al.'s code."""
    valid = terms.valid.unsqueeze(1).to(terms.logits.dtype)
    if temperature == 1.0:
        probs = terms.probs
    else:
        # log_probs = logits - logsumexp(logits): the per-pixel shift cancels in the softmax.
        probs = torch.softmax(temperature * terms.log_probs, dim=1)
    cardinality = valid.sum(dim=(2, 3))  # N×1
    gt = (terms.onehot.sum(dim=(2, 3)) + REGION_EPS) / (cardinality + REGION_EPS)
    pred = ((probs * valid).sum(dim=(2, 3)) + REGION_EPS) / (cardinality + REGION_EPS)
    return gt, pred


class _CERegion(SegmentationLoss):
    """Shared arguments of :class:`CERegionL1` and :class:`CERegionKL`."""

    def __init__(self, lam: float = 1.0, temperature: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lam = check_nonneg("lam", lam)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        self.temperature = float(temperature)

    @abstractmethod
    def region_term(self, gt: Tensor, pred: Tensor) -> Tensor:
        """The region-size penalty of each image (N) from the proportions ``τ`` and ``p̂`` (N×C)."""

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        gt, pred = region_proportions(terms, self.temperature)
        # Mean over the batch's images (every process's, when synchronised).
        return terms.ce + self.lam * terms.sum(self.region_term(gt, pred)) / terms.n_images, None

    def extra_repr(self) -> str:
        return f"lam={self.lam}, temperature={self.temperature}, " + super().extra_repr()


@register_loss("ce_l1_region")
class CERegionL1(_CERegion):
    """CE with an L1 region-size term (Liu, Dolz, Galdran, Kobbi & Ben Ayed, "Do We Really Need Dice? The Hidden
    Region-Size Biases of Segmentation Losses", Medical Image Analysis 91, 2024, arXiv:2104.08717):

    ``L = L_CE + λ · (1/(B·C)) Σ_b Σ_c |τ_bc - p̂_bc|``,

    ``τ_bc`` the proportion of class ``c`` among the non-ignored pixels of image ``b`` and ``p̂_bc`` the mean of
    ``softmax(T·logits)_c`` over them (the authors' ``CrossEntropyWithL1``, per image, averaged over images and
    classes). ``λ = 1`` and ``T = 1`` are the defaults of the authors' loss class; their released configs use
    ``T = 10`` and ``λ ∈ {1, 5}``. Oracle: NumPy float64 transcription of the authors' code.

    Args:
        lam: weight ``λ ≥ 0`` of the region-size term.
        temperature: ``T > 0`` of the softmax inside ``p̂`` (``L_CE`` always uses ``T = 1``).
    """

    def region_term(self, gt: Tensor, pred: Tensor) -> Tensor:
        return (pred - gt).abs().mean(dim=1)


@register_loss("ce_kl_region")
class CERegionKL(_CERegion):
    """CE with a KL region-size term (Liu, Dolz, Galdran, Kobbi & Ben Ayed, "Do We Really Need Dice? The Hidden
    Region-Size Biases of Segmentation Losses", Medical Image Analysis 91, 2024, arXiv:2104.08717):

    ``L = L_CE + λ · (1/B) Σ_b KL(τ_b ‖ p̂_b) = L_CE + λ · (1/B) Σ_b Σ_c τ_bc log(τ_bc / p̂_bc)``,

    with ``τ`` and ``p̂`` as in :class:`CERegionL1` (the authors' ``CrossEntropyWithKL``). Defaults ``λ = 1``,
    ``T = 1`` (their loss class's). Oracle: NumPy float64 transcription of the authors' code.

    Args:
        lam: weight ``λ ≥ 0`` of the region-size term.
        temperature: ``T > 0`` of the softmax inside ``p̂``.
    """

    def region_term(self, gt: Tensor, pred: Tensor) -> Tensor:
        return (gt * torch.log(gt / pred)).sum(dim=1)


@register_loss("gdl_boundary")
class GDLBoundary(Boundary):
    """Generalized Dice + boundary loss, the training objective of Kervadec, Bouchtiba, Desrosiers, Granger, Dolz &
    Ben Ayed ("Boundary Loss for Highly Unbalanced Segmentation", MIDL 2019, arXiv:1812.07032):

    ``L = L_GDL + α · L_B``,

    ``L_GDL`` of :class:`.region.GeneralizedDice` (batch sums, ``1/(Σ t)²`` weights) and ``L_B`` of
    :class:`.boundary.Boundary` (foreground classes). The paper starts at ``α = 0.01`` and raises it by 0.01 per
    epoch; ``alpha`` is a plain attribute, so a callback can schedule it (``loss.alpha = ...``). This is
    :class:`.boundary.Boundary` with ``region_weight = 1`` and ``alpha = 0.01``. Oracle: the sum of the two
    tested components (NumPy float64).

    Args:
        alpha: weight ``α ≥ 0`` of the boundary term.
        region_weight: weight of the Generalized Dice term (1 in the paper).
        include_background: also score class 0 in the boundary term.
    """

    def __init__(
        self, alpha: float = 0.01, region_weight: float = 1.0, include_background: bool = False, **kwargs
    ) -> None:
        super().__init__(alpha=alpha, region_weight=region_weight, include_background=include_background, **kwargs)
