"""The input contract, the shared loss terms and the registry that every loss uses.

Every loss in :mod:`lightning_seg.losses` takes raw logits ``N×C×H×W`` (any float dtype) and integer
targets ``N×H×W`` whose values are class indices in ``[0, C)`` or ``ignore_index``. The arithmetic is
done in float32 (float64 for float64 logits) with autocast disabled, so a loss gives the same value under ``bf16-mixed`` as in full
precision (up to the rounding of the logits themselves).

Each call computes the shared :class:`LossTerms` once (softmax, per-pixel CE, batch soft Dice, the
mean true-class probability) and stores detached :class:`LossParts` on the module, so a logger reads
``L_CE``, ``L_Dice``, ``p̄``, ``D`` and ``α`` for *any* loss without a second forward pass. The terms come from
one softmax pass with a closed-form backward (:class:`_SoftmaxStats`) and per-class sums over the labels, without
a one-hot tensor. Under ``torch.distributed`` with several processes the batch statistics are those of the whole
batch, summed over the processes (:mod:`.distributed`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from .distributed import ProcessReduction

#: Lower bound used wherever a value enters ``log`` or a fractional power (``L_CE``, ``1 - p̄``).
#: It keeps every value and gradient finite; see the CAML docstring for where it matters.
EPS = 1e-6

AbsentClasses = Literal["include", "exclude"]


def check_inputs(logits: Tensor, target: Tensor, ignore_index: int | None) -> bool:
    """Raise ``ValueError`` unless ``logits``/``target`` follow the input contract.

    Returns:
        whether any pixel of ``target`` is ``ignore_index`` (the losses skip the masking work when none is).
    """
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
    if target.numel() == 0:
        return False
    ignored = None if ignore_index is None else target == ignore_index
    labels = target if ignored is None else target.masked_fill(ignored, 0)
    low, high = labels.aminmax()
    any_ignored = torch.zeros_like(low, dtype=torch.bool) if ignored is None else ignored.any()
    low, high, any_ignored = torch.stack([low, high, any_ignored.long()]).tolist()  # one device sync
    if low < 0 or high >= c:
        bad = (labels < 0) | (labels >= c)
        values = torch.unique(target[bad])[:10].tolist()
        allowed = f"[0, {c - 1}]" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        raise ValueError(f"target has label values {values} outside {allowed}")
    return bool(any_ignored)


def _masked_softmax(x: Tensor, v: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(v·softmax(x), max_c x, Σ_c exp(x - max_c x))`` over dim 1: one new N×C×H×W tensor, written in place."""
    x_max = x.amax(1, keepdim=True)
    probs = torch.sub(x, x_max)
    probs.exp_()
    partition = probs.sum(1, keepdim=True)
    # One in-place pass normalises the probabilities and zeroes the ignored pixels.
    probs.mul_(partition.reciprocal() if v is None else v.unsqueeze(1) / partition)
    return probs, x_max, partition


class _SoftmaxStats(torch.autograd.Function):
    """The per-pixel terms and per-class probability sums of the batch from the logits, in one softmax pass.

    Forward, from logits ``x`` (N×C×H×W), labels ``y`` (N×H×W; any class at ignored pixels) and the mask ``v`` of
    valid pixels (``None``: every pixel is valid), with ``p = softmax(x)`` over the classes:

    * ``ce_map = -v·log p[i, y_i]`` (as ``log Σ_c exp(x_ic - max_c x_ic) - (x_iy - max_c x_ic)``, accurate for any
      logits),
    * ``pt_map = v·p[i, y_i]`` and, if ``with_max``, ``max_map = v·max_c p_ic`` (N×H×W; else ``None``),
    * ``prob_sum_c = Σ_i v_i p_ic`` (C).

    No one-hot tensor is built; the only N×C×H×W tensor made is ``v·p``, and the backward writes the gradient into
    it rather than into a new one (memory traffic and, on the CPU, fresh pages dominate the cost). A second
    backward through the same graph (``retain_graph=True``, ``gradcheck``) recomputes ``p`` from the saved logits.

    Backward, closed form: with upstream gradients ``a`` (of ``ce_map``), ``b`` (``pt_map``), ``m`` (``max_map``)
    and ``g`` (``prob_sum``), ``y_i`` the label and ``k_i`` the most probable class of pixel ``i``, and the
    softmax Jacobian ``∂p_ic/∂x_id = p_ic (δ_cd - p_id)``::

        ∂L/∂x_ic = v_i [ p_ic (g_c + w_i) + δ(c = y_i)(b_i p_iy - a_i) + δ(c = k_i) m_i p_ik ],
        w_i = a_i - b_i p_iy - m_i p_ik - Σ_d p_id g_d.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, y: Tensor, v: Tensor | None, with_max: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        probs, x_max, partition = _masked_softmax(x, v)
        # x_iy - max_c x_ic first: exact where it matters (near 0), whatever the logits' magnitude.
        ce_map = (torch.log(partition) - (x.gather(1, y.unsqueeze(1)) - x_max)).squeeze(1)
        if v is not None:
            ce_map = ce_map.masked_fill_(~v, 0.0)
        pt_map = torch.exp(-ce_map)
        if v is not None:
            pt_map = pt_map.mul_(v)
        max_map = probs.amax(1) if with_max else None
        ctx.save_for_backward(x, y, pt_map, max_map, v)
        ctx.probs = probs  # not saved_tensors: the backward overwrites it (see the class docstring)
        return ce_map, pt_map, probs.sum((0, 2, 3)), max_map

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ce, grad_pt, grad_sum, grad_max):
        x, y, pt_map, max_map, v = ctx.saved_tensors
        probs = ctx.probs if ctx.probs is not None else _masked_softmax(x, v)[0]
        ctx.probs = None
        n, c, h, w = probs.shape
        weight = torch.zeros_like(pt_map)  # w_i
        at_label = torch.zeros_like(pt_map)  # added at class y_i
        if grad_ce is not None:
            grad_ce = grad_ce if v is None else grad_ce * v
            weight += grad_ce
            at_label -= grad_ce
        if grad_pt is not None:
            pt_term = pt_map * grad_pt
            weight -= pt_term
            at_label += pt_term
        if grad_max is not None:
            max_term = max_map * grad_max
            weight -= max_term
            max_class = first_argmax(probs, max_map)
        if grad_sum is not None:
            # Σ_d p_id g_d for every pixel, as a batched (1×C)·(C×HW) product.
            weight -= torch.matmul(grad_sum.view(1, 1, c), probs.reshape(n, c, h * w)).view(n, h, w)
        # p_ic (g_c + w_i), in place, one class at a time (no N×C×H×W temporary).
        factor = torch.empty_like(weight)
        for k in range(c):
            probs[:, k].mul_(weight if grad_sum is None else torch.add(weight, grad_sum[k], out=factor))
        grad = probs
        grad.scatter_add_(1, y.unsqueeze(1), at_label.unsqueeze(1))
        if grad_max is not None:
            grad.scatter_add_(1, max_class.unsqueeze(1), max_term.unsqueeze(1))
        return grad, None, None, None


def first_argmax(probs: Tensor, max_map: Tensor) -> Tensor:
    """``argmax`` over dim 1 of an N×C×H×W tensor whose maximum ``max_map`` (N×H×W) is known, the first class on
    ties: the largest of ``(C - c)·[p_c = max]``, several times faster on the CPU than ``torch.argmax`` across
    the channel dimension."""
    c = probs.shape[1]
    dtype = torch.uint8 if c < 256 else torch.int64
    rank = torch.arange(c, 0, -1, dtype=dtype, device=probs.device).view(1, c, 1, 1)
    return c - ((probs == max_map.unsqueeze(1)) * rank).amax(1).long()


@dataclass
class LossTerms:
    """Quantities shared by the losses, computed once per call in float32 or wider; all keep their graph.

    Batch-level quantities (``class_counts`` … ``dice_loss``) are over the whole batch, i.e. over every process's
    share of it when the call's :class:`~.distributed.ProcessReduction` is synchronised; per-pixel maps are this
    process's. A loss that needs another batch-level sum takes it with :meth:`sum`, :meth:`class_sum`,
    :meth:`valid_mean` or :meth:`cat`, so it is global too. ``log_probs``, ``probs`` and ``onehot`` (N×C×H×W) are
    built on first use only: the paper's losses never build them.
    """

    logits: Tensor  # N×C×H×W, float32 or float64
    target: Tensor  # N×H×W long, ignored pixels set to class 0
    valid: Tensor  # N×H×W bool
    reduction: ProcessReduction
    ce_map: Tensor  # N×H×W, -log p[i, y_i], 0 at ignored pixels
    pt_map: Tensor  # N×H×W, p[i, y_i], 0 at ignored pixels
    max_map: Tensor | None  # N×H×W, max_c p_ic, 0 at ignored pixels (only if asked for)
    class_counts: Tensor  # C, Σ_i t_ic (number of valid pixels of each class), no gradient
    prob_sum: Tensor  # C, Σ_i p_ic over valid pixels
    intersection: Tensor  # C, Σ_i t_ic p_ic
    n_valid: Tensor  # number of valid pixels, clamped to ≥ 1
    n_images: Tensor  # number of images
    ce: Tensor  # L_CE, eq. 2
    p_bar: Tensor  # mean true-class probability over valid pixels
    max_prob: Tensor | None  # mean largest class probability over valid pixels (only if asked for)
    dice_per_class: Tensor  # C, Dice_c over the whole batch, eq. 3
    dice_loss: Tensor  # L_Dice = 1 - mean_c Dice_c, eq. 4

    @property
    def dice_coef(self) -> Tensor:
        """``D = 1 - L_Dice``, the batch's mean soft Dice."""
        return 1.0 - self.dice_loss

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    @cached_property
    def log_probs(self) -> Tensor:
        """``log softmax`` of the logits (N×C×H×W, every pixel)."""
        return F.log_softmax(self.logits, dim=1)

    @cached_property
    def probs(self) -> Tensor:
        """Softmax probabilities (N×C×H×W, every pixel)."""
        return torch.softmax(self.logits, dim=1)

    @cached_property
    def onehot(self) -> Tensor:
        """One-hot targets (N×C×H×W), zero at ignored pixels."""
        onehot = F.one_hot(self.target, self.num_classes).permute(0, 3, 1, 2).to(self.logits.dtype)
        return onehot * self.valid.unsqueeze(1)

    def reduce(self, values: Tensor) -> Tensor:
        """Element-wise sum of per-process ``values`` over the processes (``values`` itself when local)."""
        return self.reduction.sum(values)

    def sum(self, values: Tensor) -> Tensor:
        """Sum of every element of ``values`` over the batch."""
        return self.reduce(values.sum())

    def class_sum(self, values: Tensor) -> Tensor:
        """Per-class sums ``Σ_i values[i, c]`` of an N×C×H×W tensor over the batch (C)."""
        return self.reduce(values.sum(dim=(0, 2, 3)))

    def valid_mean(self, pixel_map: Tensor) -> Tensor:
        """Mean of an N×H×W map over the valid pixels of the batch (0 when none is valid)."""
        return self.sum(pixel_map * self.valid) / self.n_valid

    def cat(self, values: Tensor) -> Tensor:
        """The batch's ``values`` (this process's share first along dim 0 on one process; every process's, in rank
        order, when synchronised), for statistics that are not sums."""
        return self.reduction.cat(values)


def soft_dice_per_class(
    intersection: Tensor, prob_sum: Tensor, class_counts: Tensor, smooth: float, absent_classes: AbsentClasses
) -> tuple[Tensor, Tensor]:
    """Batch soft Dice per class and ``L_Dice`` from the batch sums ``Σ t p``, ``Σ p`` and ``Σ t`` (eq. 3-4).

    ``Dice_c = (2 Σ t p + s) / (Σ t + Σ p + s)``. With ``absent_classes="include"`` (the paper's mean over
    all C classes) an absent class scores ``s / (Σ p + s)``: 1 when nothing is predicted there, pushing
    false positives down otherwise. ``"exclude"`` averages over the classes present in the batch only.
    """
    dice = (2.0 * intersection + smooth) / (class_counts + prob_sum + smooth).clamp_min(EPS)
    if absent_classes == "include":
        return dice, 1.0 - dice.mean()
    present = class_counts > 0
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
    reduction: ProcessReduction | None = None,
    max_prob: bool = False,
) -> LossTerms:
    """Compute the shared loss terms in float32 or wider (autocast off); inputs must already be checked.

    ``reduction`` (default: this process only) says over which processes the batch statistics run; all of them
    travel in one ``all_reduce``. ``max_prob`` also computes ``max_map`` and ``max_prob`` (else ``None``).
    """
    reduction = ProcessReduction() if reduction is None else reduction
    with torch.autocast(device_type=logits.device.type, enabled=False):
        # Half and bfloat16 logits are upcast; float64 stays float64 (gradcheck).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        num_classes = logits.shape[1]
        if ignore_index is None:
            valid = torch.ones_like(target, dtype=torch.bool)
            mask = None
        else:
            valid = mask = target != ignore_index
        safe_target = target if mask is None else target.masked_fill(~mask, 0)
        ce_map, pt_map, prob_sum, max_map = _SoftmaxStats.apply(logits, safe_target, mask, max_prob)
        bins = safe_target if mask is None else target.masked_fill(~mask, num_classes)
        class_counts = torch.bincount(bins.flatten(), minlength=num_classes + 1)[:num_classes].to(logits.dtype)
        intersection = pt_map.new_zeros(num_classes).index_add(0, safe_target.flatten(), pt_map.flatten())
        n_images = logits.new_tensor(float(logits.shape[0]))
        # Every batch statistic in one reduction over the processes (a no-op on one process).
        local = [prob_sum, intersection, class_counts, ce_map.sum(), pt_map.sum(), n_images]
        prob_sum, intersection, class_counts, ce_sum, pt_sum, n_images, *max_sum = reduction.sum_each(
            local + ([] if max_map is None else [max_map.sum()])
        )
        n_valid = class_counts.sum().clamp_min(1)
        dice_per_class, dice_loss = soft_dice_per_class(intersection, prob_sum, class_counts, smooth, absent_classes)
        return LossTerms(
            logits=logits,
            target=safe_target,
            valid=valid,
            reduction=reduction,
            ce_map=ce_map,
            pt_map=pt_map,
            max_map=max_map,
            class_counts=class_counts.detach(),
            prob_sum=prob_sum,
            intersection=intersection,
            n_valid=n_valid.detach(),
            n_images=n_images.detach(),
            ce=ce_sum / n_valid,
            p_bar=pt_sum / n_valid,
            max_prob=max_sum[0] / n_valid if max_map is not None else None,
            dice_per_class=dice_per_class,
            dice_loss=dice_loss,
        )


def confidence_exponent(p_bar: Tensor, exponent: Tensor | float) -> Tensor:
    """CAML's ``α = (1 - p̄)^D`` (eq. 13): the exact value, with the gradient of ``max(1 - p̄, EPS)^D``.

    ``∂α/∂p̄ = -D (1 - p̄)^(D-1)`` is unbounded as ``p̄ → 1`` for ``D < 1`` (and ``∂α/∂D`` has ``log(1 - p̄)``), so the
    gradient is taken with ``1 - p̄`` kept in ``[EPS, 1]``: it stops at ``1 - p̄ < EPS``. The value is not clamped:
    a label-free ``p̄`` (``max_class``) reaches 1 with a large ``L_CE``, where a clamped α would change
    ``L_CE^α`` by a visible factor.
    """
    base = 1.0 - p_bar
    bounded = base.clamp(EPS, 1.0).pow(exponent)
    return bounded + (base.clamp(0.0, 1.0).pow(exponent) - bounded).detach()


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


class SegmentationLoss(nn.Module, ABC):
    """Base class of every registered loss: checks inputs, computes :class:`LossTerms`, keeps :class:`LossParts`.

    Subclasses implement :meth:`combine`, mapping the terms to ``(loss, alpha)`` where ``alpha`` is the
    exponent the loss used, or ``None`` if it has none.

    Args:
        ignore_index: target value excluded from every term (CE mean, Dice sums, ``p̄``); ``None`` for none.
        smooth: additive smoothing ``s`` of the batch Dice, in numerator and denominator.
        absent_classes: ``"include"`` averages Dice over all C classes (the paper), ``"exclude"`` over the
            classes present in the batch.
        sync_stats: when ``torch.distributed`` runs more than one process, compute every batch statistic (Dice
            sums, ``p̄``, the CE mean's pixel count, …) over the whole batch, i.e. summed over the processes, so
            the loss equals the one-process loss of the concatenated batch (default). ``False``: each process
            uses its own share only, as a per-process loss averaged by DDP; cheaper by one small ``all_reduce``
            per call, but then the batch Dice is a Dice over fewer images and CAML's ``α`` changes with the
            number of processes. See :mod:`.distributed` for the gradients.
    """

    #: Name in the registry, set by :func:`register_loss`.
    name: ClassVar[str] = ""
    #: Whether :meth:`combine` reads ``terms.max_prob`` / ``terms.max_map`` (computed only then).
    uses_max_prob: bool = False

    def __init__(
        self,
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        absent_classes: AbsentClasses = "include",
        sync_stats: bool = True,
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be ≥ 0, got {smooth}")
        if absent_classes not in ("include", "exclude"):
            raise ValueError(f"absent_classes must be 'include' or 'exclude', got {absent_classes!r}")
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.absent_classes = absent_classes
        self.sync_stats = bool(sync_stats)
        self.parts: LossParts | None = None

    @abstractmethod
    def combine(self, terms: LossTerms) -> tuple[Tensor, Tensor | None]:
        """Map the shared terms to ``(loss, alpha)``; ``alpha`` is the exponent the loss used, or ``None``."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        any_ignored = check_inputs(logits, target, self.ignore_index)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            reduction = ProcessReduction.current(self.sync_stats)
            # Without ignored pixels the masks are all ones: computing as if there were no ignore_index is the
            # same result with less work.
            ignore_index = self.ignore_index if any_ignored else None
            terms = compute_terms(
                logits, target, ignore_index, self.smooth, self.absent_classes, reduction, self.uses_max_prob
            )
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
        return (
            f"ignore_index={self.ignore_index}, smooth={self.smooth}, absent_classes={self.absent_classes!r}, "
            f"sync_stats={self.sync_stats}"
        )


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
