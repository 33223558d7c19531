"""Region-level losses of the survey (Azad et al., arXiv:2312.05391, sec. 2.2): Jaccard, Lovász-Softmax, Tversky,
Focal Tversky, Log-Cosh Dice, Generalized Dice, Sensitivity-Specificity and Generalized Wasserstein Dice.

Notation as in :mod:`.paper`: ``p_ic`` softmax probability, ``t_ic`` one-hot target, sums over ``i`` run over
every non-ignored pixel of the batch (batch-level statistics, like the paper's Dice), ``C`` classes with the
background included. Per class: ``TP_c = Σ_i t_ic p_ic``, ``FP_c = Σ_i (1 - t_ic) p_ic``,
``FN_c = Σ_i t_ic (1 - p_ic)``. ``s`` is the base class's ``smooth`` (1 by default), added to numerator and
denominator as in the batch Dice. The mean over classes follows the base class's ``absent_classes``
(``"include"``: all C classes; ``"exclude"``: those present in the batch) unless a docstring says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import EPS, AbsentClasses, LossTerms, SegmentationLoss, register_loss
from .pixel import frac_pow

GDLWeighting = Literal["square", "simple", "uniform"]
LovaszClasses = Literal["present", "all"]


def confusion_sums(terms: LossTerms) -> tuple[Tensor, Tensor, Tensor]:
    """Soft ``(TP_c, FP_c, FN_c)`` over the non-ignored pixels of the batch, each of shape C, from the shared
    batch sums (``TP_c = Σ t p``, ``FP_c = Σ p - TP_c``, ``FN_c = Σ t - TP_c``)."""
    tp = terms.intersection
    return tp, terms.prob_sum - tp, terms.class_counts - tp


def class_mean(values: Tensor, terms: LossTerms, absent_classes: AbsentClasses) -> Tensor:
    """Mean of per-class values over all classes (``"include"``) or the classes present in the batch
    (``"exclude"``; 0 when no pixel is labelled)."""
    if absent_classes == "include":
        return values.mean()
    present = terms.class_counts > 0
    n_present = present.sum()
    mean = (values * present).sum() / n_present.clamp_min(1)
    return torch.where(n_present > 0, mean, torch.zeros_like(mean))


def check_nonneg(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0, got {value}")
    return float(value)


def check_unit(name: str, value: float, *, open_low: bool = False, open_high: bool = False) -> float:
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (math.isfinite(value) and low_ok and high_ok):
        interval = ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return float(value)


@register_loss("jaccard")
class Jaccard(SegmentationLoss):
    """Soft Jaccard / IoU loss (Rahman & Wang, "Optimizing Intersection-Over-Union in Deep Neural Networks for
    Image Segmentation", ISVC 2016; survey eq. 11):

    ``L_IoU = 1 - (1/C) Σ_c (TP_c + s) / (Σ_i t_ic + Σ_i p_ic - TP_c + s)``.

    Batch-level sums, ``s = smooth``. Oracle: ``segmentation_models_pytorch.losses.JaccardLoss`` (multiclass,
    same ``smooth``) when every class is present.
    """

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        tp, fp, fn = confusion_sums(terms)
        iou = (tp + self.smooth) / (tp + fp + fn + self.smooth).clamp_min(EPS)
        return 1.0 - class_mean(iou, terms, self.absent_classes), None


@register_loss("lovasz")
class LovaszSoftmax(SegmentationLoss):
    """Lovász-Softmax loss (Berman, Rannen Triki & Blaschko, "The Lovász-Softmax Loss: A Tractable Surrogate for
    the Optimization of the Intersection-Over-Union Measure in Neural Networks", CVPR 2018, arXiv:1705.08790;
    survey eq. 12):

    ``L = (1/|C'|) Σ_{c ∈ C'} Δ̄_{J_c}(m(c))``,  ``m_i(c) = |t_ic - p_ic|``,

    ``Δ̄_{J_c}`` the Lovász extension of the Jaccard loss of class ``c``: with the errors sorted decreasingly,
    ``Δ̄(m) = Σ_k m_(k) g_k``, ``g_k = J(k) - J(k-1)`` and ``J(k)`` the Jaccard loss of predicting the ``k``
    largest-error pixels wrong (Alg. 1 of the paper).

    A vectorised re-implementation (all classes sorted at once, float64-safe) of the authors' code as shipped in
    ``segmentation_models_pytorch.losses.LovaszLoss`` (multiclass), which is the test oracle; smp's version
    casts to float32 internally and returns an empty tensor when every pixel is ignored. The batch form sorts
    over the whole batch, so under several processes the probabilities and labels of every process are
    gathered (as much data as the logits) and each process computes the loss of the concatenated batch; the
    per-image form sums its per-image losses and image count over the processes.

    Args:
        classes: ``"present"`` (the paper's default) averages over the classes present in the labels,
            ``"all"`` over all C. This replaces the base class's ``absent_classes``, which here only affects the
            logged Dice.
        per_image: compute the loss per image and average over images with at least one labelled pixel
            (paper option; default ``False``: one loss over the whole batch).
    """

    def __init__(self, classes: LovaszClasses = "present", per_image: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
        self.classes = classes
        self.per_image = bool(per_image)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        c = terms.num_classes
        if self.per_image:
            p, t, v = terms.probs.flatten(2), terms.onehot.flatten(2), terms.valid.flatten(1)  # B×C×P, B×P
        else:
            probs, target, valid = terms.cat(terms.probs), terms.cat(terms.target), terms.cat(terms.valid)
            onehot = F.one_hot(target, c).permute(0, 3, 1, 2).to(probs.dtype) * valid.unsqueeze(1)
            p = probs.transpose(0, 1).reshape(1, c, -1)
            t = onehot.transpose(0, 1).reshape(1, c, -1)
            v = valid.reshape(1, -1)
        v = v.unsqueeze(1).expand_as(t)
        vf = v.to(p.dtype)
        # Ignored pixels get error -1 so they sort after every valid pixel (errors lie in [0, 1]).
        errors = torch.where(v, (t - p).abs(), -torch.ones_like(p))
        errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
        t_sorted = t.gather(-1, perm)
        v_sorted = vf.gather(-1, perm)
        gts = t.sum(-1, keepdim=True)
        intersection = gts - t_sorted.cumsum(-1)
        union = gts + ((1.0 - t_sorted) * v_sorted).cumsum(-1)
        # union counts pixels, so it is ≥ 1 at every valid position; the clamp only guards ignored ones.
        jaccard = 1.0 - intersection / union.clamp_min(1.0)
        grad = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
        per_class = (errors_sorted * v_sorted * grad).sum(-1)  # B×C
        present = gts.squeeze(-1) > 0
        if self.classes == "present":
            n_cls = present.sum(-1)
            per_item = (per_class * present).sum(-1) / n_cls.clamp_min(1)
            has_any = n_cls > 0
        else:
            per_item = per_class.mean(-1)
            has_any = present.any(-1)
        if self.per_image:
            total, n_items = terms.reduce(torch.stack([(per_item * has_any).sum(), has_any.sum().to(p.dtype)])).unbind()
        else:  # the gathered batch is already the whole batch
            total, n_items = (per_item * has_any).sum(), has_any.sum()
        return total / n_items.clamp_min(1), None

    def extra_repr(self) -> str:
        return f"classes={self.classes!r}, per_image={self.per_image}, " + super().extra_repr()


@register_loss("tversky")
class Tversky(SegmentationLoss):
    """Tversky loss (Salehi, Erdogmus & Gholipour, "Tversky Loss Function for Image Segmentation Using 3D Fully
    Convolutional Deep Networks", MLMI 2017, arXiv:1706.05721; survey eq. 14):

    ``L_T = 1 - (1/C) Σ_c (TP_c + s) / (TP_c + α FP_c + β FN_c + s)``.

    ``α`` weighs false positives and ``β`` false negatives (the paper's convention and smp/MONAI's);
    ``α = 0.3, β = 0.7`` is the paper's best setting; with ``s = 0``, ``α = β = 0.5`` gives Dice and ``α = β = 1``
    Jaccard.
    Batch-level sums, ``s = smooth``. Oracle: ``segmentation_models_pytorch.losses.TverskyLoss``.

    Args:
        alpha: weight of false positives, ≥ 0.
        beta: weight of false negatives, ≥ 0.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha = check_nonneg("alpha", alpha)
        self.beta = check_nonneg("beta", beta)
        if self.alpha + self.beta == 0:
            raise ValueError("alpha and beta cannot both be 0")

    def tversky_index(self, terms: LossTerms) -> Tensor:
        """Per-class Tversky index ``TI_c`` (C)."""
        tp, fp, fn = confusion_sums(terms)
        return (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(EPS)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        return 1.0 - class_mean(self.tversky_index(terms), terms, self.absent_classes), None

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, " + super().extra_repr()


@register_loss("focal_tversky")
class FocalTversky(Tversky):
    """Focal Tversky loss (Abraham & Khan, "A Novel Focal Tversky Loss Function with Improved Attention U-Net for
    Lesion Segmentation", ISBI 2019, arXiv:1810.07842; survey eq. 15):

    ``L_FT = (1/C) Σ_c (1 - TI_c)^(1/γ)``,  ``TI_c`` the Tversky index of :class:`Tversky`.

    Defaults are the paper's: ``γ = 4/3`` and a false-negative weight of 0.7, false-positive weight 0.3. The
    paper writes ``α`` for the FN weight and ``β`` for the FP weight; this class keeps :class:`Tversky`'s
    (Salehi's, smp's, MONAI's) naming, ``alpha`` = FP weight = 0.3, ``beta`` = FN weight = 0.7 — the same
    setting. The paper sums over classes; we average (the sum divided by C), so the loss stays in ``[0, 1]``
    like the other region losses. ``γ = 1`` gives the Tversky loss. Oracle: a NumPy float64 transcription.

    Args:
        gamma: focal parameter ``γ > 0`` (the paper recommends ``[1, 3]``); the exponent is ``1/γ``.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 4.0 / 3.0, **kwargs) -> None:
        super().__init__(alpha=alpha, beta=beta, **kwargs)
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
        self.gamma = float(gamma)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        per_class = frac_pow(1.0 - self.tversky_index(terms), 1.0 / self.gamma)
        return class_mean(per_class, terms, self.absent_classes), None

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, " + super().extra_repr()


@register_loss("log_cosh_dice")
class LogCoshDice(SegmentationLoss):
    """Log-Cosh Dice loss (Jadon, "A Survey of Loss Functions for Semantic Segmentation", IEEE CIBCB 2020,
    arXiv:2006.14822; survey eq. 8):

    ``L_lc-dice = log(cosh(L_Dice))``,  ``L_Dice`` the paper's batch soft Dice loss (:class:`.paper.Dice`).

    No hyperparameter beyond the Dice's ``smooth`` and ``absent_classes``. Oracle: NumPy float64.
    """

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        return torch.log(torch.cosh(terms.dice_loss)), None


def generalized_dice_loss(terms: LossTerms, weighting: GDLWeighting, smooth_nr: float, smooth_dr: float) -> Tensor:
    """Batch Generalized Dice loss; see :class:`GeneralizedDice`."""
    tp, fp, fn = confusion_sums(terms)
    ground = (tp + fn).detach()
    if weighting == "square":
        w = 1.0 / ground.square()
    elif weighting == "simple":
        w = 1.0 / ground
    else:
        w = torch.ones_like(ground)
    infinite = torch.isinf(w)
    w = torch.where(infinite, torch.zeros_like(w), w)
    w = torch.where(infinite, w.max(), w)
    numerator = 2.0 * (w * tp).sum() + smooth_nr
    denominator = (w * (2.0 * tp + fp + fn)).sum() + smooth_dr
    return 1.0 - numerator / denominator


@register_loss("generalized_dice")
class GeneralizedDice(SegmentationLoss):
    """Generalized Dice loss (Sudre, Li, Vercauteren, Ourselin & Cardoso, "Generalised Dice Overlap as a Deep
    Learning Loss Function for Highly Unbalanced Segmentations", DLMIA 2017, arXiv:1707.03237):

    ``L_GDL = 1 - (2 Σ_c w_c Σ_i t_ic p_ic + ε_nr) / (Σ_c w_c Σ_i (t_ic + p_ic) + ε_dr)``,  ``w_c = 1 / (Σ_i t_ic)²``.

    Batch-level sums. Classes absent from the batch (infinite weight) get the largest finite weight, as in
    NiftyNet and MONAI; the mean over classes is built into the weights, so ``absent_classes`` and ``smooth``
    only affect the logged Dice. Oracle: ``monai.losses.GeneralizedDiceLoss(batch=True, softmax=True,
    to_onehot_y=True)`` with the same ``w_type`` and smoothing.

    Args:
        weighting: ``"square"`` (the paper's ``1/(Σ t)²``), ``"simple"`` (``1/Σ t``) or ``"uniform"`` (1).
        smooth_nr: ``ε_nr`` added to the numerator (MONAI's default 1e-5).
        smooth_dr: ``ε_dr`` added to the denominator (MONAI's default 1e-5).
    """

    def __init__(
        self, weighting: GDLWeighting = "square", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if weighting not in ("square", "simple", "uniform"):
            raise ValueError(f"weighting must be 'square', 'simple' or 'uniform', got {weighting!r}")
        self.weighting = weighting
        self.smooth_nr = check_nonneg("smooth_nr", smooth_nr)
        self.smooth_dr = check_nonneg("smooth_dr", smooth_dr)
        if self.smooth_dr == 0:
            raise ValueError("smooth_dr must be > 0 (it keeps the all-ignored batch finite)")

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        return generalized_dice_loss(terms, self.weighting, self.smooth_nr, self.smooth_dr), None

    def extra_repr(self) -> str:
        return (
            f"weighting={self.weighting!r}, smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}, "
            + super().extra_repr()
        )


@register_loss("sensitivity_specificity")
class SensitivitySpecificity(SegmentationLoss):
    """Sensitivity-Specificity loss (Brosch, Yoo, Tang, Li, Traboulsee & Tam, "Deep Convolutional Encoder
    Networks for Multiple Sclerosis Lesion Segmentation", MICCAI 2015; survey eq. 18-20):

    ``L_SS = (1/C) Σ_c [ r · Σ_i (t_ic - p_ic)² t_ic / (Σ_i t_ic + ε) + (1 - r) · Σ_i (t_ic - p_ic)² (1 - t_ic) / (Σ_i (1 - t_ic) + ε) ]``.

    The first term is the sensitivity (foreground) error, the second the specificity error; ``r = 0.05`` is the
    paper's sensitivity ratio (NiftyNet's default too), ``ε = 1e-5`` NiftyNet's guard for classes with no pixel.
    Brosch et al. define it for one lesion class; per class and averaged over classes as in the survey
    (eq. 19-20), with batch-level sums. Oracle: NumPy float64.

    Args:
        r: weight of the sensitivity term, in ``[0, 1]``.
        eps: denominator guard ``ε > 0``.
    """

    def __init__(self, r: float = 0.05, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.r = check_unit("r", r)
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        self.eps = float(eps)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        valid = terms.valid.unsqueeze(1).to(terms.probs.dtype)
        t = terms.onehot
        sq_err = (t - terms.probs).square() * valid
        positive_err, total_err = terms.reduce(
            torch.stack([(sq_err * t).sum(dim=(0, 2, 3)), sq_err.sum(dim=(0, 2, 3))])
        ).unbind()
        negatives = terms.class_counts.sum() - terms.class_counts  # non-ignored pixels of the other classes
        sensitivity_err = positive_err / (terms.class_counts + self.eps)
        specificity_err = (total_err - positive_err) / (negatives + self.eps)
        per_class = self.r * sensitivity_err + (1.0 - self.r) * specificity_err
        return class_mean(per_class, terms, self.absent_classes), None

    def extra_repr(self) -> str:
        return f"r={self.r}, eps={self.eps}, " + super().extra_repr()


@register_loss("generalized_wasserstein_dice")
class GeneralizedWassersteinDice(SegmentationLoss):
    """Generalized Wasserstein Dice loss (Fidon, Li, Garcia-Peraza-Herrera, Ekanayake, Kitchen, Ourselin &
    Vercauteren, "Generalised Wasserstein Dice Score for Imbalanced Multi-class Segmentation using Holistic
    Convolutional Networks", BrainLes @ MICCAI 2017, arXiv:1707.00478; survey eq. 9):

    ``W_i = Σ_l M[y_i, l] p_il``  (Wasserstein distance between ``p_i`` and the one-hot label under ``M``),
    ``TP = Σ_i α_{y_i} (1 - W_i)``,  ``L_GWDL = 1 - (2 TP + ε) / (2 TP + Σ_i W_i + ε)``,

    with ``α_0 = 0`` for the background (class 0) and ``α_l = 1`` otherwise, and ``M`` divided by its maximum,
    as in the authors' code and MONAI. Sums run over the non-ignored pixels of the whole batch (MONAI scores
    each image and averages). Oracle: ``monai.losses.GeneralizedWassersteinDiceLoss`` on single images.

    Args:
        dist_matrix: C×C matrix of non-negative distances between classes with a zero diagonal; ``None``
            (default) is ``1 - I``, every error costing the same, under which ``W_i = 1 - p[i, y_i]``.
        eps: ``ε`` (MONAI's ``smooth_nr = smooth_dr``, default 1e-5). The base class's ``smooth`` only affects
            the logged Dice.
    """

    def __init__(self, dist_matrix: Sequence[Sequence[float]] | None = None, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        self.eps = float(eps)
        if dist_matrix is None:
            self.dist_matrix: tuple[tuple[float, ...], ...] | None = None
        else:
            rows = tuple(tuple(float(x) for x in row) for row in dist_matrix)
            size = len(rows)
            if size < 2 or any(len(row) != size for row in rows):
                raise ValueError("dist_matrix must be a square C×C matrix with C ≥ 2")
            if any(not math.isfinite(x) or x < 0 for row in rows for x in row):
                raise ValueError("dist_matrix entries must be finite and ≥ 0")
            if any(rows[k][k] != 0 for k in range(size)):
                raise ValueError("dist_matrix must have a zero diagonal")
            if max(x for row in rows for x in row) == 0:
                raise ValueError("dist_matrix must have a positive entry")
            self.dist_matrix = rows

    def matrix(self, terms: LossTerms) -> Tensor:
        c = terms.num_classes
        kw = {"dtype": terms.logits.dtype, "device": terms.logits.device}
        if self.dist_matrix is None:
            return 1.0 - torch.eye(c, **kw)
        if len(self.dist_matrix) != c:
            raise ValueError(
                f"dist_matrix is {len(self.dist_matrix)}×{len(self.dist_matrix)} but there are {c} classes"
            )
        m = torch.as_tensor(self.dist_matrix, **kw)
        return m / m.max()

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        m = self.matrix(terms)
        # Row y_i of M at every pixel, zero at ignored pixels.
        m_rows = m[terms.target].permute(0, 3, 1, 2) * terms.valid.unsqueeze(1)
        wass = (m_rows * terms.probs).sum(1)
        foreground = (terms.target > 0) & terms.valid  # α_{y_i}: 0 for the background, 1 otherwise
        tp, all_error = terms.reduce(torch.stack([(foreground * (1.0 - wass)).sum(), wass.sum()])).unbind()
        return 1.0 - (2.0 * tp + self.eps) / (2.0 * tp + all_error + self.eps), None

    def extra_repr(self) -> str:
        return f"dist_matrix={self.dist_matrix}, eps={self.eps}, " + super().extra_repr()
