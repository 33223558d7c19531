"""The input contract, the shared loss terms and the registry that every loss uses.

Every loss in :mod:`lightning_seg.losses` takes raw logits ``N×C×H×W`` (any float dtype) and integer
targets ``N×H×W`` whose values are class indices in ``[0, C)`` or ``ignore_index``. The arithmetic is
done in float32 (float64 for float64 logits) with autocast disabled, so a loss gives the same value under ``bf16-mixed`` as in full
precision (up to the rounding of the logits themselves).

Each call computes the shared :class:`LossTerms` once (softmax, per-pixel CE, batch soft Dice, the
mean true-class probability) and stores detached :class:`LossParts` on the module, so a logger reads
``L_CE``, ``L_Dice``, ``p̄``, ``D`` and ``α`` for *any* loss without a second forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: Lower bound used wherever a value enters ``log`` or a fractional power (``L_CE``, ``1 - p̄``).
#: It keeps every value and gradient finite; see the CAML docstring for where it matters.
EPS = 1e-6

AbsentClasses = Literal["include", "exclude"]


def check_inputs(logits: Tensor, target: Tensor, ignore_index: int | None) -> None:
    """Raise ``ValueError`` unless ``logits``/``target`` follow the input contract."""
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise ValueError("logits and target must be torch.Tensor")
    if logits.ndim != 4:
        raise ValueError(f"logits must be N×C×H×W, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got dtype {logits.dtype}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 channels (one per class, background included), got {logits.shape[1]}")
    if target.ndim != 3:
        raise ValueError(f"target must be N×H×W, got shape {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"target must be a long (int64) tensor of class indices, got dtype {target.dtype}")
    n, c, h, w = logits.shape
    if tuple(target.shape) != (n, h, w):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape {tuple(logits.shape)}: "
            f"expected {(n, h, w)}"
        )
    bad = (target < 0) | (target >= c)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        values = torch.unique(target[bad])[:10].tolist()
        allowed = f"[0, {c - 1}]" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        raise ValueError(f"target has label values {values} outside {allowed}")


@dataclass
class LossTerms:
    """Quantities shared by the losses, computed once per call in float32 (all keep their graph).

    ``ce_map`` and ``pt_map`` are zero at ignored pixels; ``valid`` marks the others.
    """

    log_probs: Tensor  # N×C×H×W
    probs: Tensor  # N×C×H×W
    onehot: Tensor  # N×C×H×W, zero at ignored pixels
    valid: Tensor  # N×H×W bool
    n_valid: Tensor  # scalar, clamped to ≥ 1
    ce_map: Tensor  # N×H×W, -log p[i, y_i]
    pt_map: Tensor  # N×H×W, p[i, y_i]
    ce: Tensor  # L_CE, eq. 2
    p_bar: Tensor  # mean true-class probability over valid pixels
    dice_per_class: Tensor  # C, Dice_c over the whole batch, eq. 3
    dice_loss: Tensor  # L_Dice = 1 - mean_c Dice_c, eq. 4

    @property
    def dice_coef(self) -> Tensor:
        """``D = 1 - L_Dice``, the batch's mean soft Dice."""
        return 1.0 - self.dice_loss

    def valid_mean(self, pixel_map: Tensor) -> Tensor:
        """Mean of an N×H×W map over the valid pixels (0 when none is valid)."""
        return (pixel_map * self.valid).sum() / self.n_valid


def soft_dice_per_class(
    probs: Tensor, onehot: Tensor, smooth: float, absent_classes: AbsentClasses
) -> tuple[Tensor, Tensor]:
    """Batch soft Dice per class and ``L_Dice``; sums run over every pixel of the batch (eq. 3-4).

    ``Dice_c = (2 Σ t p + s) / (Σ t + Σ p + s)``. With ``absent_classes="include"`` (the paper's mean over
    all C classes) an absent class scores ``s / (Σ p + s)``: 1 when nothing is predicted there, pushing
    false positives down otherwise. ``"exclude"`` averages over the classes present in the batch only.
    """
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    target_sum = onehot.sum(dims)
    cardinality = probs.sum(dims) + target_sum
    dice = (2.0 * intersection + smooth) / (cardinality + smooth).clamp_min(EPS)
    if absent_classes == "include":
        return dice, 1.0 - dice.mean()
    present = target_sum > 0
    n_present = present.sum()
    mean_present = (dice * present).sum() / n_present.clamp_min(1)
    # No labelled pixel at all: nothing to match, the Dice term is 0.
    return dice, torch.where(n_present > 0, 1.0 - mean_present, torch.zeros_like(mean_present))


def compute_terms(
    logits: Tensor,
    target: Tensor,
    ignore_index: int | None,
    smooth: float = 1.0,
    absent_classes: AbsentClasses = "include",
) -> LossTerms:
    """Compute the shared loss terms in float32 or wider (autocast off); inputs must already be checked."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        # Half and bfloat16 logits are upcast; float64 stays float64 (gradcheck).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        num_classes = logits.shape[1]
        valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
        safe_target = target.masked_fill(~valid, 0)
        log_probs = F.log_softmax(logits, dim=1)
        probs = log_probs.exp()
        onehot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
        onehot = onehot * valid.unsqueeze(1)
        n_valid = valid.sum().clamp_min(1).to(probs.dtype)
        log_pt = log_probs.gather(1, safe_target.unsqueeze(1)).squeeze(1) * valid
        ce_map = -log_pt
        pt_map = log_pt.exp() * valid
        # Ignored pixels leave the Dice sums too, not only the CE mean.
        dice_per_class, dice_loss = soft_dice_per_class(probs * valid.unsqueeze(1), onehot, smooth, absent_classes)
        return LossTerms(
            log_probs=log_probs,
            probs=probs,
            onehot=onehot,
            valid=valid,
            n_valid=n_valid,
            ce_map=ce_map,
            pt_map=pt_map,
            ce=ce_map.sum() / n_valid,
            p_bar=pt_map.sum() / n_valid,
            dice_per_class=dice_per_class,
            dice_loss=dice_loss,
        )


def confidence_exponent(p_bar: Tensor, exponent: Tensor | float) -> Tensor:
    """CAML's ``α = (1 - p̄)^D`` (eq. 13), with ``1 - p̄`` kept in ``[EPS, 1]`` so α and its gradient stay finite."""
    return (1.0 - p_bar).clamp(EPS, 1.0).pow(exponent)


def safe_pow(base: Tensor, exponent: Tensor) -> Tensor:
    """``base ** exponent`` for ``base ≥ 0`` as ``exp(exponent · log(max(base, EPS)))``.

    The derivative in the exponent is ``base^exponent · log(base)``, which is ``0 · (-inf)`` at
    ``base = 0``; bounding the base below by ``EPS`` keeps it finite.
    """
    return torch.exp(exponent * torch.log(base.clamp_min(EPS)))


@dataclass(frozen=True)
class LossParts:
    """Detached values of one loss call, for logging: the loss and ``L_CE, L_Dice, p̄, D, α``.

    ``alpha`` is the α the loss used (CAML, fixed r) or, for losses without one, CAML's
    ``(1 - p̄)^D`` on the same batch, so every loss can be compared on the same axes.
    """

    loss: Tensor
    ce: Tensor
    dice_loss: Tensor
    p_bar: Tensor
    dice_coef: Tensor
    alpha: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


class SegmentationLoss(nn.Module):
    """Base class of every registered loss: checks inputs, computes :class:`LossTerms`, keeps :class:`LossParts`.

    Subclasses implement :meth:`combine`, mapping the terms to ``(loss, alpha)`` where ``alpha`` is the
    exponent the loss used, or ``None`` if it has none.

    Args:
        ignore_index: target value excluded from every term (CE mean, Dice sums, ``p̄``); ``None`` for none.
        smooth: additive smoothing ``s`` of the batch Dice, in numerator and denominator.
        absent_classes: ``"include"`` averages Dice over all C classes (the paper), ``"exclude"`` over the
            classes present in the batch.
    """

    #: Name in the registry, set by :func:`register_loss`.
    name: ClassVar[str] = ""

    def __init__(
        self,
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        absent_classes: AbsentClasses = "include",
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be ≥ 0, got {smooth}")
        if absent_classes not in ("include", "exclude"):
            raise ValueError(f"absent_classes must be 'include' or 'exclude', got {absent_classes!r}")
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.absent_classes = absent_classes
        self.parts: LossParts | None = None

    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        check_inputs(logits, target, self.ignore_index)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            terms = compute_terms(logits, target, self.ignore_index, self.smooth, self.absent_classes)
            loss, alpha = self.combine(terms)
            with torch.no_grad():
                if alpha is None:
                    alpha = confidence_exponent(terms.p_bar, terms.dice_coef)
                self.parts = LossParts(
                    loss=loss.detach(),
                    ce=terms.ce.detach(),
                    dice_loss=terms.dice_loss.detach(),
                    p_bar=terms.p_bar.detach(),
                    dice_coef=terms.dice_coef.detach(),
                    alpha=alpha.detach(),
                )
        return loss

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, smooth={self.smooth}, absent_classes={self.absent_classes!r}"


LOSSES: dict[str, type[SegmentationLoss]] = {}

L = TypeVar("L", bound=type[SegmentationLoss])


def register_loss(name: str) -> Callable[[L], L]:
    """Class decorator adding a :class:`SegmentationLoss` to the registry under ``name``."""

    def decorator(cls: L) -> L:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered by {LOSSES[name].__qualname__}")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return decorator


def build_loss(name: str, **kwargs) -> SegmentationLoss:
    """Instantiate the registered loss ``name`` with ``kwargs`` (e.g. ``build_loss("additive", lam=0.5)``)."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; registered: {', '.join(sorted(LOSSES))}") from None
    return cls(**kwargs)
