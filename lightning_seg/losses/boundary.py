"""Boundary-level losses of the survey (Azad et al., arXiv:2312.05391, sec. 2.3): the boundary loss of Kervadec et
al., the distance-transform Hausdorff loss of Karimi & Salcudean and the Boundary DoU loss of Sun et al., with
an exact Euclidean distance transform computed in torch on the tensors' device.

Distance maps are computed from the targets (and, for Hausdorff-DT, the thresholded predictions) at every call,
per image and per class, in pixel units, without gradient. Ignored pixels count as "not this class" when the
maps are built and are left out of every sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import LossTerms, SegmentationLoss, register_loss
from .region import check_nonneg, generalized_dice_loss

#: Largest number of float32 elements one chunk of the second EDT pass materialises (64 MiB).
EDT_CHUNK_ELEMENTS = 1 << 24


@torch.no_grad()
def distance_transform_edt(
    mask: Tensor, spacing: tuple[float, float] | None = None, chunk_elements: int = EDT_CHUNK_ELEMENTS
) -> Tensor:
    """Exact Euclidean distance transform over the last two dimensions, batched over the leading ones.

    Same convention as ``scipy.ndimage.distance_transform_edt``: every ``True`` (non-zero) pixel gets its
    Euclidean distance to the nearest ``False`` pixel of the same 2-D image, ``False`` pixels get 0. Images with
    no ``False`` pixel get ``inf`` everywhere (scipy's output is undefined there); callers mask those out.

    Algorithm (the separable decomposition of the squared EDT, Saito & Toriwaki 1994, Meijster et al. 2000):
    1. along the longer image axis, the 1-D distance ``g`` to the nearest ``False`` pixel of the same column,
       from a forward ``cummax`` and a backward ``cummin`` of the feature indices (O(HW));
    2. along the shorter axis, ``D²(y, x) = min_x' (x - x')² + g(y, x')²`` by a broadcast minimum
       (O(HW·min(H, W)) work, fully vectorised, chunked to ``chunk_elements`` elements of memory).
    Both steps are exact; values are computed in float32, exact for squared distances below 2²⁴.

    Args:
        mask: boolean (or 0/1) tensor ``…×H×W``.
        spacing: pixel size ``(dy, dx)`` (scipy's ``sampling``); ``None`` for unit pixels.
        chunk_elements: memory bound of the second pass.

    Returns:
        float32 tensor of ``mask``'s shape on its device.
    """
    if mask.ndim < 2:
        raise ValueError(f"mask must have at least 2 dimensions (…×H×W), got shape {tuple(mask.shape)}")
    sy, sx = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    if not (sy > 0 and sx > 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    mask = mask.bool()
    h, w = mask.shape[-2:]
    if w > h:
        # The brute-force pass runs along the last axis: make it the shorter one.
        return distance_transform_edt(mask.transpose(-1, -2), (sx, sy), chunk_elements).transpose(-1, -2)
    if mask.numel() == 0:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    device = mask.device
    feature = ~mask
    inf = torch.tensor(float("inf"), device=device)
    idx = torch.arange(h, dtype=torch.float32, device=device).view(h, 1)
    # Pass 1 (columns): index of the nearest feature pixel at or above / at or below each pixel.
    above = torch.where(feature, idx, -inf).cummax(dim=-2).values
    below = torch.where(feature, idx, inf).flip(-2).cummin(dim=-2).values.flip(-2)
    g2 = (torch.minimum(idx - above, below - idx) * sy).square()  # inf where the column has no feature
    # Pass 2 (rows): D²(y, x) = min_x' (x - x')² + g²(y, x').
    xs = torch.arange(w, dtype=torch.float32, device=device) * sx
    dx2 = (xs.view(w, 1) - xs.view(1, w)).square()
    rows = g2.reshape(-1, w)
    out = torch.empty_like(rows)
    step = max(1, chunk_elements // (w * w))
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = (rows[start : start + step].unsqueeze(1) + dx2).amin(dim=-1)
    return out.sqrt().reshape(mask.shape)


def _has_interface(mask: Tensor) -> Tensor:
    """``…×1×1`` flag: the 2-D mask has both foreground and background pixels."""
    return mask.flatten(-2).any(-1)[..., None, None] & (~mask).flatten(-2).any(-1)[..., None, None]


@torch.no_grad()
def signed_distance_map(mask: Tensor) -> Tensor:
    """Kervadec et al.'s level-set map ``φ`` of each 2-D mask (``…×H×W``, float32).

    ``φ = d(·, mask)`` outside the mask and ``-(d(·, ∁mask) - 1)`` inside (``d`` the Euclidean distance to the
    nearest pixel of the set), i.e. positive outside, ≤ 0 inside and 0 on the inner boundary, as in the authors'
    ``one_hot2dist`` and MONAI's ``BoundaryLoss``; 0 everywhere for empty or full masks.
    """
    mask = mask.bool()
    dist_out = distance_transform_edt(~mask)  # background pixels: distance to the nearest mask pixel
    dist_in = distance_transform_edt(mask)  # mask pixels: distance to the nearest background pixel
    phi = torch.where(mask, 1.0 - dist_in, dist_out)
    return torch.where(_has_interface(mask), phi, torch.zeros_like(phi))


@torch.no_grad()
def unsigned_distance_map(mask: Tensor) -> Tensor:
    """Karimi & Salcudean's ``d``: distance of every pixel to the other region (to the background for mask
    pixels, to the mask for background pixels), as MONAI's ``HausdorffDTLoss``; 0 for empty or full masks."""
    mask = mask.bool()
    field = torch.where(mask, distance_transform_edt(mask), distance_transform_edt(~mask))
    return torch.where(_has_interface(mask), field, torch.zeros_like(field))


def _class_slice(include_background: bool, num_classes: int) -> slice:
    if include_background or num_classes == 1:
        return slice(0, num_classes)
    return slice(1, num_classes)


def boundary_term(terms: LossTerms, include_background: bool) -> Tensor:
    """Kervadec et al.'s ``L_B``; see :class:`Boundary`."""
    classes = _class_slice(include_background, terms.num_classes)
    onehot = terms.onehot[:, classes]
    phi = signed_distance_map(onehot > 0.5).to(terms.probs.dtype)
    valid = terms.valid.unsqueeze(1).to(terms.probs.dtype)
    total = terms.sum(terms.probs[:, classes] * phi * valid)
    return total / (terms.n_valid * onehot.shape[1])


@register_loss("boundary")
class Boundary(SegmentationLoss):
    """Boundary loss (Kervadec, Bouchtiba, Desrosiers, Granger, Dolz & Ben Ayed, "Boundary Loss for Highly
    Unbalanced Segmentation", MIDL 2019 / Medical Image Analysis 67, 2021, arXiv:1812.07032; survey eq. 23):

    ``L_B = (1/(N·|K|)) Σ_{c ∈ K} Σ_i φ_c(i) p_ic``,

    ``φ_c`` the signed distance map of class ``c``'s ground truth in its image (:func:`signed_distance_map`:
    distance to the region outside it, minus (distance to the background − 1) inside, 0 for a class absent from
    or filling the image), ``N`` the non-ignored pixels, ``K`` the scored classes. As in the authors' code
    (``SurfaceLoss`` over the foreground classes ``idc``) the background class 0 is left out by default.

    The paper trains with ``L = L_GDL + α L_B``, ``α`` starting at 0.01 and raised during training; on
    its own ``L_B`` does not train a network from scratch (it settles on all-background). This class computes
    ``region_weight · L_GDL + alpha · L_B`` (:class:`.region.GeneralizedDice` with its default weights); the
    defaults ``region_weight = 0, alpha = 1`` give the bare ``L_B`` of the equation, and
    :class:`.compound.GDLBoundary` (``gdl_boundary``) is the paper's objective. ``alpha`` is a plain attribute
    a callback can schedule. Oracle: ``monai.losses.BoundaryLoss(include_background=False, softmax=True,
    to_onehot_y=True)``, whose maps follow the same definition.

    Args:
        alpha: weight ``α ≥ 0`` of the boundary term.
        region_weight: weight ``≥ 0`` of the Generalized Dice term (0: the bare boundary term).
        include_background: also score class 0 in ``L_B``.
    """

    def __init__(
        self, alpha: float = 1.0, region_weight: float = 0.0, include_background: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.alpha = check_nonneg("alpha", alpha)
        self.region_weight = check_nonneg("region_weight", region_weight)
        self.include_background = bool(include_background)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        loss = self.alpha * boundary_term(terms, self.include_background)
        if self.region_weight > 0:
            loss = loss + self.region_weight * generalized_dice_loss(terms, "square", 1e-5, 1e-5)
        return loss, None

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, region_weight={self.region_weight}, include_background={self.include_background}, "
            + super().extra_repr()
        )


@register_loss("hausdorff_dt")
class HausdorffDT(SegmentationLoss):
    """Distance-transform Hausdorff loss HD-DT (Karimi & Salcudean, "Reducing the Hausdorff Distance in Medical
    Image Segmentation with Convolutional Neural Networks", IEEE TMI 39(2), 2020, arXiv:1904.10030):

    ``L_HD-DT = (1/(N·|K|)) Σ_{c ∈ K} Σ_i (p_ic - t_ic)² (d_{p,c}(i)^α + d_{t,c}(i)^α)``,

    ``d_{t,c}`` the unsigned distance map of class ``c``'s ground truth (:func:`unsigned_distance_map`) and
    ``d_{p,c}`` that of the prediction thresholded at ``p_ic > 0.5``, recomputed at every call and not
    differentiated; ``α = 2`` is the paper's value. The paper treats one foreground class; over classes the
    mean runs over the foreground classes by default (MONAI's ``HausdorffDTLoss`` default, the test oracle with
    ``softmax=True, to_onehot_y=True``).

    The paper trains with the HD term plus a Dice term, ``L_HD-DT + λ L_DSC``, balancing their magnitudes; alone
    the term does not train a network from scratch (far background pixels carry weights ``∝ d²`` and the
    network settles on predicting background). ``dice_weight`` adds ``λ · L_Dice`` (the paper's batch Dice of
    :class:`.paper.Dice`); the default 0 is the bare term. The distances are in pixels, so a useful ``λ`` grows
    with the image size (``λ = 10`` overfits a 16×16 image in the tests).

    Args:
        alpha: exponent of the distances, ≥ 0.
        include_background: also score class 0.
        dice_weight: weight ``λ ≥ 0`` of the Dice term.
    """

    def __init__(
        self, alpha: float = 2.0, include_background: bool = False, dice_weight: float = 0.0, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.alpha = check_nonneg("alpha", alpha)
        self.include_background = bool(include_background)
        self.dice_weight = check_nonneg("dice_weight", dice_weight)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        classes = _class_slice(self.include_background, terms.num_classes)
        valid = terms.valid.unsqueeze(1)
        probs = terms.probs[:, classes]
        onehot = terms.onehot[:, classes]
        with torch.no_grad():
            d_pred = unsigned_distance_map((probs > 0.5) & valid)
            d_true = unsigned_distance_map(onehot > 0.5)
            weight = (d_pred.pow(self.alpha) + d_true.pow(self.alpha)).to(probs.dtype)
        error = (probs - onehot).square() * valid.to(probs.dtype)
        loss = terms.sum(error * weight) / (terms.n_valid * probs.shape[1])
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * terms.dice_loss
        return loss, None

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, include_background={self.include_background}, dice_weight={self.dice_weight}, "
            + super().extra_repr()
        )


@register_loss("boundary_dou")
class BoundaryDoU(SegmentationLoss):
    """Boundary Difference over Union loss (Sun, Luo, Yang, Chen, Zhang, Yu & Xiao, "Boundary Difference over Union
    Loss for Medical Image Segmentation", MICCAI 2023, arXiv:2308.00220; survey eq. 30):

    ``L_BDoU = (1/C) Σ_c (Σ p_c² + Σ t_c - 2 Σ p_c t_c + s) / (Σ p_c² + Σ t_c - (1 + α_c) Σ p_c t_c + s)``,

    ``α_c = min(1 - 2 (B_c + s) / (S_c + s), α_max)``, ``S_c`` the number of class-``c`` pixels and ``B_c`` that of its
    boundary pixels (class pixels with a 4-neighbour, or the image border, outside the class), ``s = 1e-5``:
    the authors' code, including its squared prediction in the union and the truncation ``α_max = 0.8`` they
    recommend. Counts and sums run over the whole batch, the mean over all C classes (a class absent from the
    batch scores 1). Oracle: a NumPy float64 transcription of the authors' ``BoundaryDoULoss``.

    Args:
        alpha_max: upper bound of ``α_c``, in ``[-1, 1)`` (``α_c`` itself lies in ``[-1, 1)``); ``None`` keeps the
            untruncated ``α_c`` of the paper's eq.
    """

    def __init__(self, alpha_max: float | None = 0.8, **kwargs) -> None:
        super().__init__(**kwargs)
        if alpha_max is not None and not (-1.0 <= alpha_max < 1.0):
            raise ValueError(f"alpha_max must lie in [-1, 1) or be None, got {alpha_max}")
        self.alpha_max = None if alpha_max is None else float(alpha_max)

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        smooth = 1e-5
        t = terms.onehot
        n, c, h, w = t.shape
        with torch.no_grad():
            kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=t.dtype, device=t.device)
            neighbours = F.conv2d(t.reshape(n * c, 1, h, w), kernel.view(1, 1, 3, 3), padding=1).view(n, c, h, w)
            boundary = (t > 0.5) & (neighbours < 4.5)
            b_count = boundary.sum(dim=(0, 2, 3)).to(t.dtype)
        probs = terms.probs * terms.valid.unsqueeze(1).to(t.dtype)
        # Boundary pixels are found per image; their count, like Σ p², is a sum over the batch.
        b_count, z_sum = terms.reduce(torch.stack([b_count, probs.square().sum(dim=(0, 2, 3))])).unbind()
        s_count = terms.class_counts
        alpha = 1.0 - 2.0 * (b_count.detach() + smooth) / (s_count + smooth)
        if self.alpha_max is not None:
            alpha = alpha.clamp_max(self.alpha_max)
        intersect = terms.intersection
        y_sum = s_count
        per_class = (z_sum + y_sum - 2.0 * intersect + smooth) / (z_sum + y_sum - (1.0 + alpha) * intersect + smooth)
        return per_class.mean(), None

    def extra_repr(self) -> str:
        return f"alpha_max={self.alpha_max}, " + super().extra_repr()
