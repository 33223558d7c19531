"""Tests of the survey losses (pixel.py, region.py, boundary.py, compound.py).

Values are checked against maintained libraries (segmentation_models_pytorch, MONAI, torch, scipy) where they
implement the same loss, and otherwise against NumPy float64 transcriptions of the papers' equations / authors'
code written here, independently of the implementation.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import segmentation_models_pytorch as smp
import torch
import yaml
from torch import nn
from torch.nn import functional as F

import lightning_seg.losses as losses
from lightning_seg.losses import LOSSES, build_loss, distance_transform_edt

ROOT = Path(__file__).resolve().parents[2]
IGNORE = 255

SURVEY_LOSSES = [
    "focal",
    "topk",
    "weighted_ce",
    "jaccard",
    "lovasz",
    "tversky",
    "focal_tversky",
    "log_cosh_dice",
    "generalized_dice",
    "sensitivity_specificity",
    "generalized_wasserstein_dice",
    "boundary",
    "hausdorff_dt",
    "boundary_dou",
    "combo",
    "exp_log",
    "unified_focal",
    "ce_l1_region",
    "ce_kl_region",
    "gdl_boundary",
]
PAPER_LOSSES = ["ce", "dice", "additive", "ml", "caml", "caml_fixed_r"]

#: The bare distance terms settle on all-background from scratch; the papers train them next to a regional loss.
OVERFIT_KWARGS = {"boundary": {"region_weight": 1.0, "alpha": 0.01}, "hausdorff_dt": {"dice_weight": 10.0}}


pytestmark = pytest.mark.usefixtures("single_thread")


# --------------------------------------------------------------------------------------------------------------
# Inputs and NumPy float64 helpers
# --------------------------------------------------------------------------------------------------------------


def make_batch(n=2, c=3, h=8, w=9, seed=0, ignore=True, scale=2.0, dtype=torch.float32):
    """Random logits and blob-like targets (every class present), some pixels ignored."""
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, c, h, w, generator=g)).to(dtype)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    target = torch.zeros(n, h, w, dtype=torch.long)
    for b in range(n):
        for k in range(1, c):
            cy, cx = torch.randint(0, h, (1,), generator=g).item(), torch.randint(0, w, (1,), generator=g).item()
            r = 1.5 + 2.0 * torch.rand(1, generator=g).item()
            target[b][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    target[0, 0, 0] = 0
    for k in range(c):  # make sure every class is present in the batch
        target[-1, -1, k] = k
    if ignore:
        target[0, 1, 1:4] = IGNORE
        target[-1, 2, 2] = IGNORE
    return logits, target


def np_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_onehot(target, c):
    target = np.asarray(target)
    valid = target != IGNORE
    t = np.stack([(target == k) & valid for k in range(c)], axis=1).astype(np.float64)
    return t, valid


def np_inputs(logits, target):
    p = np_softmax(logits.detach().double().numpy())
    t, valid = np_onehot(target.numpy(), p.shape[1])
    return p, t, valid


def np_ce_map(p, t):
    return -(np.log(np.clip((p * t).sum(1), 1e-300, None))) * (t.sum(1) > 0)


def np_batch_dice(p, t, valid, smooth=1.0):
    pv = p * valid[:, None]
    inter = (pv * t).sum((0, 2, 3))
    return (2 * inter + smooth) / (pv.sum((0, 2, 3)) + t.sum((0, 2, 3)) + smooth)


def np_signed_map(mask):
    """Kervadec's one_hot2dist for one 2-D mask, zero for empty/full masks (MONAI's convention)."""
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    edt = scipy.ndimage.distance_transform_edt
    return edt(~mask) * (~mask) - (edt(mask) - 1) * mask


def np_unsigned_map(mask):
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    edt = scipy.ndimage.distance_transform_edt
    return edt(mask) + edt(~mask)


def value(name, logits, target, **kwargs):
    return build_loss(name, **kwargs)(logits, target).item()


# --------------------------------------------------------------------------------------------------------------
# Exact distance transform
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "density", "spacing"),
    [((7, 11), 0.3, None), ((2, 3, 16, 5), 0.1, None), ((13, 13), 0.02, (0.5, 2.0)), ((1, 40, 33), 0.005, (1.5, 1.0))],
)
def test_edt_matches_scipy(shape, density, spacing):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > density  # True = foreground; the False pixels are the features
    flat = mask.reshape(-1, *shape[-2:])
    for img in flat:  # scipy's output is undefined without a zero pixel
        img[rng.integers(shape[-2]), rng.integers(shape[-1])] = False
    ours = distance_transform_edt(torch.from_numpy(mask), spacing=spacing).numpy()
    ref = np.stack([scipy.ndimage.distance_transform_edt(img, sampling=spacing) for img in flat]).reshape(shape)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-5)


def test_edt_chunking_and_degenerate_masks():
    rng = np.random.default_rng(3)
    mask = torch.from_numpy(rng.random((3, 9, 6)) > 0.2)
    mask[:, 0, 0] = False
    full = distance_transform_edt(mask)
    np.testing.assert_allclose(distance_transform_edt(mask, chunk_elements=7).numpy(), full.numpy())
    only_true = distance_transform_edt(torch.ones(4, 5, dtype=torch.bool))
    assert torch.isinf(only_true).all()
    assert (distance_transform_edt(torch.zeros(4, 5, dtype=torch.bool)) == 0).all()


# --------------------------------------------------------------------------------------------------------------
# Values against oracles
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_smp(gamma):
    logits, target = make_batch(seed=1)
    valid = target != IGNORE
    flat_logits = logits.permute(0, 2, 3, 1)[valid]
    ref = smp.losses._functional.softmax_focal_loss_with_logits(flat_logits, target[valid], gamma=gamma)
    assert value("focal", logits, target, gamma=gamma) == pytest.approx(ref.item(), rel=1e-5)


def test_focal_alpha_numpy():
    logits, target = make_batch(seed=2)
    alpha = [0.25, 1.0, 2.0]
    p, t, valid = np_inputs(logits, target)
    pt = (p * t).sum(1)
    w = (t * np.array(alpha)[None, :, None, None]).sum(1)
    ref = (w * (1 - pt) ** 2 * np_ce_map(p, t))[valid].mean()
    assert value("focal", logits, target, alpha=alpha) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("k", [10.0, 37.5, 100.0])
def test_topk_numpy(k):
    logits, target = make_batch(seed=3)
    p, t, valid = np_inputs(logits, target)
    ce = np.sort(np_ce_map(p, t)[valid])[::-1]
    n_keep = max(1, int(ce.size * k / 100))
    assert value("topk", logits, target, k=k) == pytest.approx(ce[:n_keep].mean(), rel=1e-5)
    if k == 100.0:
        assert value("topk", logits, target, k=k) == pytest.approx(value("ce", logits, target), rel=1e-6)


def test_weighted_ce_matches_torch():
    logits, target = make_batch(seed=4)
    _, t, _ = np_inputs(logits, target)
    counts = t.sum((0, 2, 3))
    inv = counts.sum() / (len(counts) * counts)
    for weight, w in (("inverse_frequency", inv), ("inverse_sqrt_frequency", np.sqrt(inv)), ([0.2, 1.0, 3.0], None)):
        w = np.array(weight) if w is None else w
        ref = F.cross_entropy(logits, target, weight=torch.tensor(w, dtype=torch.float32), ignore_index=IGNORE)
        assert value("weighted_ce", logits, target, weight=weight) == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_jaccard_matches_smp(smooth):
    logits, target = make_batch(seed=5)
    ref = smp.losses.JaccardLoss("multiclass", smooth=smooth, ignore_index=IGNORE)(logits, target)
    assert value("jaccard", logits, target, smooth=smooth) == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_smp(per_image):
    logits, target = make_batch(n=3, seed=6)
    ref = smp.losses.LovaszLoss("multiclass", per_image=per_image, ignore_index=IGNORE)(logits, target)
    assert value("lovasz", logits, target, per_image=per_image) == pytest.approx(ref.item(), rel=1e-5)


def test_lovasz_all_classes_matches_reference():
    logits, target = make_batch(n=2, c=4, seed=7)
    target[target == 3] = 0  # class 3 absent
    probs = torch.softmax(logits, 1)
    ref = smp.losses.lovasz._lovasz_softmax(probs, target, classes="all", ignore=IGNORE)
    assert value("lovasz", logits, target, classes="all") == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.7), (0.5, 0.5), (1.0, 1.0)])
def test_tversky_matches_smp(alpha, beta):
    logits, target = make_batch(seed=8)
    ref = smp.losses.TverskyLoss("multiclass", alpha=alpha, beta=beta, smooth=1.0, ignore_index=IGNORE)
    assert value("tversky", logits, target, alpha=alpha, beta=beta) == pytest.approx(
        ref(logits, target).item(), rel=1e-5
    )
    # Without smoothing, α = β = 0.5 is the Dice loss and α = β = 1 the Jaccard loss.
    unsmoothed = value("tversky", logits, target, alpha=alpha, beta=beta, smooth=0.0)
    if alpha == beta == 0.5:
        assert unsmoothed == pytest.approx(value("dice", logits, target, smooth=0.0), rel=1e-6)
    if alpha == beta == 1.0:
        assert unsmoothed == pytest.approx(value("jaccard", logits, target, smooth=0.0), rel=1e-6)


def np_tversky_index(p, t, valid, alpha, beta, smooth=1.0):
    pv = p * valid[:, None]
    tp = (pv * t).sum((0, 2, 3))
    fp = (pv * (1 - t)).sum((0, 2, 3))
    fn = (t * (1 - pv)).sum((0, 2, 3))
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def test_focal_tversky_numpy():
    logits, target = make_batch(seed=9)
    p, t, valid = np_inputs(logits, target)
    ti = np_tversky_index(p, t, valid, 0.3, 0.7)
    ref = np.mean((1 - ti) ** (3 / 4))
    assert value("focal_tversky", logits, target) == pytest.approx(ref, rel=1e-5)
    assert value("focal_tversky", logits, target, gamma=1.0) == pytest.approx(value("tversky", logits, target))


def test_log_cosh_dice_numpy():
    logits, target = make_batch(seed=10)
    p, t, valid = np_inputs(logits, target)
    ref = np.log(np.cosh(1 - np_batch_dice(p, t, valid).mean()))
    assert value("log_cosh_dice", logits, target) == pytest.approx(ref, rel=1e-5)


def np_gdl(p, t, valid, weighting="square", eps=1e-5):
    pv = p * valid[:, None]
    ground = t.sum((0, 2, 3))
    with np.errstate(divide="ignore"):
        w = {"square": 1 / ground**2, "simple": 1 / ground, "uniform": np.ones_like(ground)}[weighting]
    finite = np.isfinite(w)
    w = np.where(finite, w, w[finite].max() if finite.any() else 0.0)
    inter = (pv * t).sum((0, 2, 3))
    return 1 - (2 * (w * inter).sum() + eps) / ((w * (pv.sum((0, 2, 3)) + ground)).sum() + eps)


@pytest.mark.parametrize("weighting", ["square", "simple", "uniform"])
def test_generalized_dice_matches_monai(weighting):
    import monai.losses as monai_losses

    logits, target = make_batch(n=2, c=4, seed=11, ignore=False)
    target[target == 2] = 0  # an absent class exercises the infinite-weight rule
    ref = monai_losses.GeneralizedDiceLoss(
        include_background=True, to_onehot_y=True, softmax=True, w_type=weighting, batch=True
    )(logits, target[:, None])
    assert value("generalized_dice", logits, target, weighting=weighting) == pytest.approx(ref.item(), rel=1e-5)


def test_generalized_dice_numpy_with_ignored_pixels():
    logits, target = make_batch(n=2, c=4, seed=12)
    target[target == 3] = 1
    assert value("generalized_dice", logits, target) == pytest.approx(np_gdl(*np_inputs(logits, target)), rel=1e-5)


def test_sensitivity_specificity_numpy():
    logits, target = make_batch(seed=13)
    p, t, valid = np_inputs(logits, target)
    r, eps = 0.05, 1e-5
    v = valid[:, None]
    sq = (t - p) ** 2 * v
    neg = (1 - t) * v
    sens = (sq * t).sum((0, 2, 3)) / (t.sum((0, 2, 3)) + eps)
    spec = (sq * neg).sum((0, 2, 3)) / (neg.sum((0, 2, 3)) + eps)
    ref = np.mean(r * sens + (1 - r) * spec)
    assert value("sensitivity_specificity", logits, target) == pytest.approx(ref, rel=1e-5)


def np_gwdl(p, t, valid, m, eps=1e-5):
    m = m / m.max()
    wass = np.einsum("nkhw,kl,nlhw->nhw", t, m, p)
    alpha = np.ones(m.shape[0])
    alpha[0] = 0
    tp = (np.einsum("nkhw,k->nhw", t, alpha) * (1 - wass)).sum()
    return 1 - (2 * tp + eps) / (2 * tp + wass.sum() + eps)


def test_generalized_wasserstein_dice_matches_monai():
    import monai.losses as monai_losses

    logits, target = make_batch(n=1, c=3, seed=14, ignore=False)
    m = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])
    for dist in (None, m):
        matrix = 1 - np.eye(3) if dist is None else dist
        ref = monai_losses.GeneralizedWassersteinDiceLoss(dist_matrix=matrix.astype(np.float32))(logits, target)
        ours = value("generalized_wasserstein_dice", logits, target, dist_matrix=None if dist is None else m.tolist())
        assert ours == pytest.approx(ref.item(), rel=1e-5)
    # Batch-level sums with ignored pixels.
    logits, target = make_batch(n=2, c=3, seed=15)
    ref = np_gwdl(*np_inputs(logits, target), m)
    assert value("generalized_wasserstein_dice", logits, target, dist_matrix=m.tolist()) == pytest.approx(ref, rel=1e-5)


def np_boundary(p, t, valid, include_background=False):
    start = 0 if include_background else 1
    total = 0.0
    for b in range(p.shape[0]):
        for c in range(start, p.shape[1]):
            total += (np_signed_map(t[b, c] > 0.5) * p[b, c] * valid[b]).sum()
    return total / (max(valid.sum(), 1) * (p.shape[1] - start))


def test_boundary_matches_monai():
    import monai.losses as monai_losses

    logits, target = make_batch(n=2, c=3, h=12, w=10, seed=16, ignore=False)
    for include_background in (False, True):
        ref = monai_losses.BoundaryLoss(include_background=include_background, softmax=True, to_onehot_y=True)(
            logits, target[:, None]
        )
        ours = value("boundary", logits, target, include_background=include_background)
        assert ours == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)


def test_boundary_numpy_with_ignored_pixels():
    logits, target = make_batch(n=2, c=3, h=12, w=10, seed=17)
    assert value("boundary", logits, target) == pytest.approx(np_boundary(*np_inputs(logits, target)), rel=1e-5)


def np_hausdorff(p, t, valid, alpha=2.0, include_background=False):
    start = 0 if include_background else 1
    total = 0.0
    for b in range(p.shape[0]):
        for c in range(start, p.shape[1]):
            d = np_unsigned_map((p[b, c] > 0.5) & valid[b]) ** alpha + np_unsigned_map(t[b, c] > 0.5) ** alpha
            total += ((p[b, c] - t[b, c]) ** 2 * d * valid[b]).sum()
    return total / (max(valid.sum(), 1) * (p.shape[1] - start))


def test_hausdorff_dt_matches_monai():
    import monai.losses as monai_losses

    logits, target = make_batch(n=2, c=3, h=12, w=10, seed=18, ignore=False, scale=4.0)
    for alpha, include_background in ((2.0, False), (1.0, True)):
        ref = monai_losses.HausdorffDTLoss(
            alpha=alpha, include_background=include_background, softmax=True, to_onehot_y=True
        )(logits, target[:, None])
        ours = value("hausdorff_dt", logits, target, alpha=alpha, include_background=include_background)
        assert ours == pytest.approx(ref.item(), rel=1e-5)


def test_hausdorff_dt_numpy_with_ignored_pixels():
    logits, target = make_batch(n=2, c=3, h=12, w=10, seed=19, scale=4.0)
    assert value("hausdorff_dt", logits, target) == pytest.approx(np_hausdorff(*np_inputs(logits, target)), rel=1e-5)


def np_boundary_dou(p, t, valid, alpha_max=0.8):
    """Transcription of the authors' BoundaryDoULoss (batch-level counts, mean over all classes)."""
    smooth = 1e-5
    kernel = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    pv = p * valid[:, None]
    losses_c = []
    for c in range(p.shape[1]):
        target = t[:, c]
        y = np.stack([scipy.ndimage.convolve(img, kernel, mode="constant", cval=0.0) for img in target]) * target
        y[y == 5] = 0
        boundary, size = np.count_nonzero(y), np.count_nonzero(target)
        alpha = 2 * (1 - (boundary + smooth) / (size + smooth)) - 1
        if alpha_max is not None:
            alpha = min(alpha, alpha_max)
        inter, y_sum, z_sum = (pv[:, c] * target).sum(), (target * target).sum(), (pv[:, c] ** 2).sum()
        losses_c.append((z_sum + y_sum - 2 * inter + smooth) / (z_sum + y_sum - (1 + alpha) * inter + smooth))
    return np.mean(losses_c)


@pytest.mark.parametrize("alpha_max", [0.8, None])
def test_boundary_dou_numpy(alpha_max):
    logits, target = make_batch(n=2, c=3, h=14, w=12, seed=20)
    target[1, 3:13, 2:11] = 2  # a large region: untruncated alpha > 0.8
    ref = np_boundary_dou(*np_inputs(logits, target), alpha_max=alpha_max)
    assert value("boundary_dou", logits, target, alpha_max=alpha_max) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.5), (0.3, 0.8)])
def test_combo_numpy(alpha, beta):
    logits, target = make_batch(seed=21)
    p, t, valid = np_inputs(logits, target)
    v = valid[:, None]
    bce = -(beta * t * np.log(p) + (1 - beta) * (1 - t) * np.log(1 - np.minimum(p, 1 - 1e-7))) * v
    ref = alpha * bce.sum() / (valid.sum() * p.shape[1]) - (1 - alpha) * np_batch_dice(p, t, valid).mean()
    assert value("combo", logits, target, alpha=alpha, beta=beta) == pytest.approx(ref, rel=1e-5)


def test_exp_log_numpy():
    logits, target = make_batch(seed=22)
    p, t, valid = np_inputs(logits, target)
    dice = np_batch_dice(p, t, valid)
    counts = t.sum((0, 2, 3))
    w = np.sqrt(counts.sum() / counts)
    w_map = (t * w[None, :, None, None]).sum(1)
    ce = np_ce_map(p, t)
    ref = 0.8 * np.mean((-np.log(dice)) ** 0.3) + 0.2 * (w_map * ce**0.3)[valid].mean()
    assert value("exp_log", logits, target) == pytest.approx(ref, rel=1e-5)
    freq = [0.7, 0.2, 0.1]
    w = np.sqrt(1.0 / np.array(freq))
    w_map = (t * w[None, :, None, None]).sum(1)
    ref = 0.8 * np.mean((-np.log(dice)) ** 0.3) + 0.2 * (w_map * ce**0.3)[valid].mean()
    assert value("exp_log", logits, target, class_frequencies=freq) == pytest.approx(ref, rel=1e-5)


def np_unified_focal(p, t, valid, lam=0.5, delta=0.6, gamma=0.5, eps=1e-7):
    """The authors' asymmetric focal + asymmetric focal Tversky (Keras code), one-vs-background for C > 2."""
    v = valid[:, None]
    ce = -t * np.log(p) * v
    back = (1 - delta) * (1 - p[:, 0]) ** gamma * ce[:, 0]
    fore = delta * ce[:, 1:].sum(1)
    focal = (back + fore)[valid].mean()
    pv = p * v
    tp = (t * pv).sum((0, 2, 3))
    fn = (t * (1 - pv)).sum((0, 2, 3))
    fp = ((1 - t) * pv).sum((0, 2, 3))
    mti = (tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps)
    ftl = np.mean(np.concatenate([1 - mti[:1], (1 - mti[1:]) * (1 - mti[1:]) ** (-gamma)]))
    return lam * focal + (1 - lam) * ftl


def test_unified_focal_numpy():
    logits, target = make_batch(n=2, c=3, seed=23)
    ref = np_unified_focal(*np_inputs(logits, target))
    assert value("unified_focal", logits, target) == pytest.approx(ref, rel=1e-5)
    ref = np_unified_focal(*np_inputs(logits, target), lam=0.2, delta=0.7, gamma=0.25)
    assert value("unified_focal", logits, target, lam=0.2, delta=0.7, gamma=0.25) == pytest.approx(ref, rel=1e-5)


def test_unified_focal_matches_monai_binary():
    import monai.losses as monai_losses

    logits, target = make_batch(n=1, c=2, seed=24, ignore=False)
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target, 2).permute(0, 3, 1, 2).float()
    ftl = monai_losses.unified_focal_loss.AsymmetricFocalTverskyLoss(delta=0.6, gamma=0.5)(probs, onehot)
    afl = monai_losses.unified_focal_loss.AsymmetricFocalLoss(delta=0.6, gamma=0.5)(probs, onehot)
    assert value("unified_focal", logits, target, lam=0.0) == pytest.approx(ftl.item(), rel=1e-5)
    # MONAI's focal mean also divides by the 2 channels; the authors' code sums them.
    assert value("unified_focal", logits, target, lam=1.0) == pytest.approx(2 * afl.item(), rel=1e-5)


def np_region_props(p, t, valid, temperature, logits):
    eps = 1e-10
    q = np_softmax(temperature * logits)
    card = valid.sum((1, 2))[:, None]
    gt = (t.sum((2, 3)) + eps) / (card + eps)
    pred = ((q * valid[:, None]).sum((2, 3)) + eps) / (card + eps)
    return gt, pred


@pytest.mark.parametrize(("lam", "temperature"), [(1.0, 1.0), (5.0, 10.0)])
def test_ce_region_terms_numpy(lam, temperature):
    logits, target = make_batch(n=3, c=4, seed=25)
    target[1][target[1] == 2] = 0  # class absent from one image
    p, t, valid = np_inputs(logits, target)
    ce = np_ce_map(p, t)[valid].mean()
    gt, pred = np_region_props(p, t, valid, temperature, logits.double().numpy())
    ref_l1 = ce + lam * np.abs(pred - gt).mean()
    ref_kl = ce + lam * (gt * np.log(gt / pred)).sum(1).mean()
    kw = {"lam": lam, "temperature": temperature}
    assert value("ce_l1_region", logits, target, **kw) == pytest.approx(ref_l1, rel=1e-5)
    assert value("ce_kl_region", logits, target, **kw) == pytest.approx(ref_kl, rel=1e-5)


def test_gdl_boundary_is_gdl_plus_boundary():
    logits, target = make_batch(n=2, c=3, h=12, w=10, seed=26)
    p, t, valid = np_inputs(logits, target)
    for alpha in (0.01, 0.5):
        ref = np_gdl(p, t, valid) + alpha * np_boundary(p, t, valid)
        assert value("gdl_boundary", logits, target, alpha=alpha) == pytest.approx(ref, rel=1e-5)
        assert value("boundary", logits, target, alpha=alpha, region_weight=1.0) == pytest.approx(ref, rel=1e-5)


def test_hausdorff_dt_dice_weight():
    logits, target = make_batch(n=2, c=3, h=12, w=10, seed=31, scale=4.0)
    p, t, valid = np_inputs(logits, target)
    ref = np_hausdorff(p, t, valid) + 3.0 * (1 - np_batch_dice(p, t, valid).mean())
    assert value("hausdorff_dt", logits, target, dice_weight=3.0) == pytest.approx(ref, rel=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Gradients and numerical robustness
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SURVEY_LOSSES)
def test_gradcheck_float64(name):
    logits, target = make_batch(n=2, c=3, h=6, w=7, seed=27, scale=1.0, dtype=torch.float64)
    logits.requires_grad_(True)
    loss = build_loss(name)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-5, fast_mode=True)


def _check_finite(name, logits, target, **kwargs):
    logits = logits.detach().clone().requires_grad_(True)
    loss = build_loss(name, **kwargs)(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss), f"{name}: loss {loss}"
    assert torch.isfinite(grad).all(), f"{name}: non-finite gradient"
    return loss


@pytest.mark.parametrize("name", SURVEY_LOSSES)
def test_finite_on_edge_cases(name):
    logits, target = make_batch(n=2, c=4, h=8, w=9, seed=28)
    sign = torch.where(torch.rand(logits.shape, generator=torch.Generator().manual_seed(0)) > 0.5, 1.0, -1.0)
    _check_finite(name, 1e4 * sign, target)  # saturated softmax, confidently wrong
    safe = target.clamp_max(3)
    perfect = 1e4 * (2.0 * F.one_hot(safe, 4).permute(0, 3, 1, 2).float() - 1.0)
    _check_finite(name, perfect, target)  # perfect predictions
    absent = target.clone()
    absent[absent == 3] = 1  # class 3 absent from the batch
    _check_finite(name, logits, absent)
    _check_finite(name, perfect, absent)
    all_ignored = torch.full_like(target, IGNORE)
    _check_finite(name, logits, all_ignored)
    _check_finite(name, logits[:1, :, :1, :1], target[:1, :1, :1])  # a single pixel


@pytest.mark.parametrize("name", SURVEY_LOSSES)
def test_bf16_autocast_cpu(name):
    logits, target = make_batch(n=2, c=3, h=8, w=9, seed=29)
    model = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        model.bias.zero_()
    loss_fn = build_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(logits)
        assert out.dtype == torch.bfloat16
        loss = loss_fn(out, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(model.weight.grad).all()
    reference = loss_fn(out.detach().float(), target)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-6)


def test_perfect_prediction_scores_zero():
    """Losses whose minimum is 0 (without smoothing) reach it at a confident perfect prediction."""
    logits, target = make_batch(n=2, c=3, seed=30, ignore=False)
    perfect = 50.0 * (2.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float() - 1.0)
    for name in ["focal", "topk", "weighted_ce", "lovasz", "tversky", "focal_tversky", "log_cosh_dice",
                 "generalized_dice", "sensitivity_specificity", "generalized_wasserstein_dice", "hausdorff_dt",
                 "exp_log", "unified_focal", "ce_l1_region", "ce_kl_region"]:  # fmt: skip
        assert value(name, perfect, target, smooth=0.0) == pytest.approx(0.0, abs=2e-5), name


# --------------------------------------------------------------------------------------------------------------
# Overfitting one image with a tiny network
# --------------------------------------------------------------------------------------------------------------


def _overfit_problem():
    torch.manual_seed(0)
    h = w = 16
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    target = torch.zeros(1, h, w, dtype=torch.long)
    target[0][(yy - 5) ** 2 + (xx - 5) ** 2 <= 9] = 1
    target[0, 9:14, 8:15] = 2
    image = torch.tensor([0.0, 1.0, -1.0])[target].unsqueeze(1) + 0.3 * torch.randn(1, 1, h, w)
    return image, target


@pytest.mark.parametrize("name", SURVEY_LOSSES)
def test_overfits_one_image(name):
    image, target = _overfit_problem()
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
    loss_fn = build_loss(name, **OVERFIT_KWARGS.get(name, {}))
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    first = None
    for _ in range(120):
        opt.zero_grad()
        loss = loss_fn(net(image), target)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    with torch.no_grad():
        final = loss_fn(net(image), target).item()
        accuracy = (net(image).argmax(1) == target).float().mean().item()
    assert final < first
    assert accuracy >= 0.95, f"{name}: accuracy {accuracy:.3f}"


# --------------------------------------------------------------------------------------------------------------
# Registry, hyperparameter validation, configs and docs
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SURVEY_LOSSES)
def test_registered_with_cited_docstring(name):
    cls = LOSSES[name]
    assert cls.name == name
    assert getattr(losses, cls.__name__) is cls
    doc = cls.__doc__ or ""
    assert re.search(r"\b(19|20)\d\d\b", doc), f"{name}: docstring must cite its paper (authors, year, venue)"
    assert "=" in doc, f"{name}: docstring must give the equation"
    assert "oracle" in doc.lower(), f"{name}: docstring must name the test oracle"


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("focal", {"gamma": -1.0}),
        ("focal", {"alpha": [1.0]}),
        ("focal", {"alpha": [1.0, -2.0]}),
        ("focal", {"alpha": "x"}),
        ("topk", {"k": 0.0}),
        ("topk", {"k": 101.0}),
        ("weighted_ce", {"weight": "median"}),
        ("weighted_ce", {"weight": [0.0, 0.0]}),
        ("tversky", {"alpha": -0.1}),
        ("tversky", {"alpha": 0.0, "beta": 0.0}),
        ("focal_tversky", {"gamma": 0.0}),
        ("generalized_dice", {"weighting": "cube"}),
        ("generalized_dice", {"smooth_dr": 0.0}),
        ("sensitivity_specificity", {"r": 1.5}),
        ("sensitivity_specificity", {"eps": 0.0}),
        ("generalized_wasserstein_dice", {"dist_matrix": [[0.0, 1.0]]}),
        ("generalized_wasserstein_dice", {"dist_matrix": [[1.0, 1.0], [1.0, 0.0]]}),
        ("generalized_wasserstein_dice", {"eps": 0.0}),
        ("lovasz", {"classes": "some"}),
        ("hausdorff_dt", {"alpha": -1.0}),
        ("boundary_dou", {"alpha_max": 1.0}),
        ("combo", {"alpha": 1.5}),
        ("combo", {"beta": -0.5}),
        ("exp_log", {"gamma_dice": 0.0}),
        ("exp_log", {"w_cross": -1.0}),
        ("exp_log", {"class_frequencies": [1.0, 0.0, 2.0]}),
        ("unified_focal", {"gamma": 1.0}),
        ("unified_focal", {"delta": 2.0}),
        ("ce_l1_region", {"lam": -1.0}),
        ("ce_kl_region", {"temperature": 0.0}),
        ("gdl_boundary", {"alpha": -0.1}),
        ("boundary", {"region_weight": -1.0}),
        ("hausdorff_dt", {"dice_weight": -1.0}),
    ],
)
def test_invalid_hyperparameters_raise(name, kwargs):
    with pytest.raises(ValueError):
        build_loss(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("focal", {"alpha": [1.0, 2.0]}), ("weighted_ce", {"weight": [1.0, 2.0]}),
     ("generalized_wasserstein_dice", {"dist_matrix": [[0.0, 1.0], [1.0, 0.0]]}),
     ("exp_log", {"class_frequencies": [1.0, 2.0]})],
)  # fmt: skip
def test_wrong_number_of_class_weights_raises(name, kwargs):
    logits, target = make_batch(c=3)
    with pytest.raises(ValueError, match="3"):
        build_loss(name, **kwargs)(logits, target)


def _default_init_args(cls):
    """Keyword defaults of the loss's own hyperparameters (not the base class's)."""
    base = set(inspect.signature(losses.SegmentationLoss.__init__).parameters)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in base and p.kind is p.POSITIONAL_OR_KEYWORD}


@pytest.mark.parametrize("name", SURVEY_LOSSES)
def test_config_fragment(name):
    config = yaml.safe_load((ROOT / "configs" / "losses" / f"{name}.yaml").read_text())
    loss_cfg = config["model"]["init_args"]["loss"]
    module, _, cls_name = loss_cfg["class_path"].rpartition(".")
    assert module == "lightning_seg.losses"
    cls = getattr(losses, cls_name)
    assert cls is LOSSES[name]
    init_args = loss_cfg["init_args"]
    assert init_args == _default_init_args(cls)
    assert repr(cls(**init_args)) == repr(cls())


def test_docs_table_lists_every_loss():
    text = (ROOT / "docs" / "losses.md").read_text()
    for name in SURVEY_LOSSES + PAPER_LOSSES:
        assert f"`{name}`" in text, name


def test_registry_holds_exactly_the_documented_losses():
    assert set(LOSSES) == set(SURVEY_LOSSES) | set(PAPER_LOSSES)
