"""Tests of the six paper losses against an independent NumPy reference (:mod:`tests.losses.reference`),
hand-computed cases, identities between the losses, gradients, numerical robustness and a tiny overfit run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from lightning_seg.losses import LOSSES, build_loss
from tests.losses import reference as ref

IGNORE = 255
PBARS = ("true_class", "all_classes", "per_pixel", "max_class")
ALPHA_GRADS = ("pbar", "none", "full")
#: Losses the NumPy reference knows.
REFERENCE_LOSSES = {"ce", "dice", "additive", "ml", "caml", "caml_fixed_r"}
#: Constructor arguments a registered loss cannot do without.
REQUIRED_KWARGS = {"caml_fixed_r": {"r": 1.0}}

# Losses and options that change the *value* (alpha_grad only changes the gradient).
BASE_CONFIGS: list[tuple[str, dict]] = [
    ("ce", {}),
    ("dice", {}),
    ("additive", {"lam": 0.3}),
    ("additive", {"lam": 0.5}),
    ("additive", {"lam": 0.7}),
    ("ml", {}),
    *[("caml", {"pbar": p}) for p in PBARS],
    *[("caml_fixed_r", {"r": 1.0, "pbar": p}) for p in PBARS],
    ("caml_fixed_r", {"r": 3.0}),
    ("caml_fixed_r", {"r": 0.5, "pbar": "per_pixel"}),
]
DICE_OPTIONS: list[dict] = [
    {},
    {"absent_classes": "exclude"},
    {"smooth": 0.0},
    {"smooth": 0.5, "absent_classes": "exclude"},
]
VALUE_CONFIGS = [(name, {**kw, **opt}) for name, kw in BASE_CONFIGS for opt in DICE_OPTIONS]


def _with_alpha_grads(configs):
    out = []
    for name, kw in configs:
        if name in ("caml", "caml_fixed_r"):
            out += [(name, {**kw, "alpha_grad": g}) for g in ALPHA_GRADS]
        else:
            out.append((name, kw))
    return out


#: Every loss and every option, alpha_grad included, on the default Dice options ...
ALL_OPTION_CONFIGS = _with_alpha_grads(BASE_CONFIGS) + [
    ("dice", {"absent_classes": "exclude"}),
    ("dice", {"smooth": 0.0}),
    ("caml", {"absent_classes": "exclude"}),
    ("caml", {"smooth": 0.0, "pbar": "per_pixel"}),
    ("ml", {"smooth": 0.0, "absent_classes": "exclude"}),
]
#: ... plus any loss registered later (with defaults), so robustness tests cover it automatically.
ROBUST_CONFIGS = ALL_OPTION_CONFIGS + [
    (name, REQUIRED_KWARGS.get(name, {})) for name in sorted(LOSSES) if name not in {n for n, _ in BASE_CONFIGS}
]


pytestmark = pytest.mark.usefixtures("single_thread")


def cfg_id(cfg) -> str:
    name, kw = cfg
    return name + ("[" + ",".join(f"{k}={v}" for k, v in kw.items()) + "]" if kw else "")


def make_inputs(seed, shape, num_classes, ignore_frac=0.0, dtype=torch.float64, scale=2.0):
    """Random logits ``N×C×H×W`` and labels with a fraction of ignored pixels (at least one pixel stays valid)."""
    n, h, w = shape
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, num_classes, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(0, num_classes, (n, h, w), generator=g)
    if ignore_frac > 0:
        mask = torch.rand(n, h, w, generator=g) < ignore_frac
        mask[0, 0, 0] = False
        target[mask] = IGNORE
    return logits, target


def np64(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).cpu().numpy()


def ref_eval(cfg, logits, target, **extra):
    name, kw = cfg
    return ref.evaluate(name, np64(logits), target.numpy(), **kw, **extra)


def loss_and_grad(cfg, logits, target):
    """(module, loss value, d loss / d logits) for one config."""
    name, kw = cfg
    fn = build_loss(name, **kw)
    x = logits.detach().clone().requires_grad_(True)
    value = fn(x, target)
    (grad,) = torch.autograd.grad(value, x)
    return fn, value.detach(), grad


def tol(dtype):
    return {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}


def assert_close(actual, expected, dtype=torch.float64, what=""):
    actual = float(actual)
    t = tol(dtype)
    assert math.isclose(actual, expected, rel_tol=t["rtol"], abs_tol=t["atol"]), (
        f"{what}: got {actual!r}, expected {expected!r}"
    )


# ---------------------------------------------------------------------------------------------------------
# 1. Against the reference: values and logged parts
# ---------------------------------------------------------------------------------------------------------

SHAPES = [(1, 4, 4), (2, 3, 5), (1, 1, 7), (2, 8, 8)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("ignore_frac", [0.0, 0.3], ids=["noignore", "ignore"])
@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("cfg", VALUE_CONFIGS, ids=cfg_id)
def test_matches_reference(cfg, num_classes, ignore_frac, dtype):
    name, kw = cfg
    for seed, shape in enumerate(SHAPES):
        logits, target = make_inputs(seed, shape, num_classes, ignore_frac, dtype, scale=1.0 + seed)
        fn = build_loss(name, **kw)
        value = fn(logits, target)
        expected = ref_eval(cfg, logits, target)
        assert value.shape == ()
        assert value.dtype == dtype
        assert_close(value, expected["loss"], dtype, f"loss {shape} seed {seed}")
        parts = fn.parts
        for field in ("loss", "ce", "dice_loss", "p_bar", "dice_coef", "alpha"):
            part = getattr(parts, field)
            assert not part.requires_grad, field
            assert_close(part, expected[field], dtype, f"parts.{field} {shape} seed {seed}")
        assert float(parts.dice_coef) == pytest.approx(1.0 - float(parts.dice_loss), rel=1e-12, abs=1e-12)
        assert float(parts.loss) == float(value)


@pytest.mark.parametrize("cfg", VALUE_CONFIGS, ids=cfg_id)
def test_reference_agreement_with_absent_classes_and_single_class_targets(cfg):
    """Targets using only one of five classes; the reference's absent-class policy must match."""
    logits, _ = make_inputs(7, (2, 3, 4), 5, dtype=torch.float64)
    for label in (0, 3):
        target = torch.full((2, 3, 4), label)
        target[1, 0, :2] = IGNORE
        value = build_loss(cfg[0], **cfg[1])(logits, target)
        assert_close(value, ref_eval(cfg, logits, target)["loss"], torch.float64, f"label {label}")


# ---------------------------------------------------------------------------------------------------------
# 2. Hand-computed cases
# ---------------------------------------------------------------------------------------------------------

# Case A: 1×2×1×2. Pixel 0: logits (log 3, 0) -> p = (3/4, 1/4), label 0. Pixel 1: logits (0, 0) -> p = (1/2, 1/2),
# label 1.
A_CE = (math.log(4 / 3) + math.log(2)) / 2
A_DICE_S1 = ((2 * 3 / 4 + 1) / (1 + (3 / 4 + 1 / 2) + 1), (2 * 1 / 2 + 1) / (1 + (1 / 4 + 1 / 2) + 1))  # 10/13, 8/11
A_DICE_S0 = ((2 * 3 / 4) / (1 + 3 / 4 + 1 / 2), (2 * 1 / 2) / (1 + 1 / 4 + 1 / 2))  # 2/3, 4/7
A_LD = 1 - (A_DICE_S1[0] + A_DICE_S1[1]) / 2
A_LD0 = 1 - (A_DICE_S0[0] + A_DICE_S0[1]) / 2
A_D = 1 - A_LD
A_PBAR = (3 / 4 + 1 / 2) / 2  # 5/8

HAND_A = [
    ("ce", {}, A_CE, (1 - A_PBAR) ** A_D),
    ("dice", {}, A_LD, (1 - A_PBAR) ** A_D),
    ("dice", {"smooth": 0.0}, A_LD0, (1 - A_PBAR) ** (1 - A_LD0)),
    ("additive", {"lam": 0.3}, 0.3 * A_LD + 0.7 * A_CE, (1 - A_PBAR) ** A_D),
    ("ml", {}, A_LD * A_CE, (1 - A_PBAR) ** A_D),
    ("ml", {"smooth": 0.0}, A_LD0 * A_CE, (1 - A_PBAR) ** (1 - A_LD0)),
    ("caml", {}, A_LD * A_CE ** ((3 / 8) ** A_D), (3 / 8) ** A_D),
    ("caml", {"pbar": "all_classes"}, A_LD * A_CE ** ((1 / 2) ** A_D), (1 / 2) ** A_D),
    (
        "caml",
        {"pbar": "per_pixel"},
        A_LD * (math.log(4 / 3) ** ((1 / 4) ** A_D) + math.log(2) ** ((1 / 2) ** A_D)) / 2,
        ((1 / 4) ** A_D + (1 / 2) ** A_D) / 2,
    ),
    ("caml_fixed_r", {"r": 2.0}, A_LD * A_CE ** ((3 / 8) ** 2), (3 / 8) ** 2),
    ("caml_fixed_r", {"r": 0.0}, A_LD * A_CE, 1.0),
]


def hand_a_inputs(dtype):
    logits = torch.tensor([[[[math.log(3), 0.0]], [[0.0, 0.0]]]], dtype=dtype)
    target = torch.tensor([[[0, 1]]])
    return logits, target


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "kw", "expected", "alpha"), HAND_A, ids=[cfg_id(c[:2]) for c in HAND_A])
def test_hand_computed_two_pixels(name, kw, expected, alpha, dtype):
    logits, target = hand_a_inputs(dtype)
    fn = build_loss(name, **kw)
    assert_close(fn(logits, target), expected, dtype, "loss")
    assert_close(fn.parts.ce, A_CE, dtype, "ce")
    assert_close(fn.parts.p_bar, A_PBAR, dtype, "p_bar")
    assert_close(fn.parts.alpha, alpha, dtype, "alpha")
    assert_close(fn.parts.dice_loss, A_LD0 if kw.get("smooth") == 0.0 else A_LD, dtype, "dice_loss")


def test_hand_case_agrees_with_reference():
    """The reference reproduces the hand-computed numbers too (a check of the reference itself)."""
    logits, target = hand_a_inputs(torch.float64)
    for name, kw, expected, alpha in HAND_A:
        out = ref_eval((name, kw), logits, target)
        assert out["loss"] == pytest.approx(expected, rel=1e-12)
        assert out["alpha"] == pytest.approx(alpha, rel=1e-12)


# Case B: 1×3×1×3, class 2 absent, pixel 2 ignored.
# Pixel 0: logits (log 2, 0, 0) -> p = (1/2, 1/4, 1/4), label 0.
# Pixel 1: logits (0, log 3, 0) -> p = (1/5, 3/5, 1/5), label 1.
# Pixel 2: logits (100, -7, 3), label 255: must not count anywhere.
B_CE = (math.log(2) + math.log(5 / 3)) / 2
B_DICE_S1 = (
    (2 * 1 / 2 + 1) / (1 + (1 / 2 + 1 / 5) + 1),  # 20/27
    (2 * 3 / 5 + 1) / (1 + (1 / 4 + 3 / 5) + 1),  # 44/57
    (0 + 1) / (0 + (1 / 4 + 1 / 5) + 1),  # 20/29: absent class, s / (Σp + s)
)
B_DICE_S0 = ((2 * 1 / 2) / (1 + 1 / 2 + 1 / 5), (2 * 3 / 5) / (1 + 1 / 4 + 3 / 5), 0.0)
B_PBAR = (1 / 2 + 3 / 5) / 2

HAND_B = [
    ("dice", {}, 1 - sum(B_DICE_S1) / 3),
    ("dice", {"absent_classes": "exclude"}, 1 - (B_DICE_S1[0] + B_DICE_S1[1]) / 2),
    ("dice", {"smooth": 0.0}, 1 - sum(B_DICE_S0) / 3),
    ("dice", {"smooth": 0.0, "absent_classes": "exclude"}, 1 - (B_DICE_S0[0] + B_DICE_S0[1]) / 2),
    ("ce", {}, B_CE),
    ("additive", {"lam": 0.7}, 0.7 * (1 - sum(B_DICE_S1) / 3) + 0.3 * B_CE),
    ("caml", {}, (1 - sum(B_DICE_S1) / 3) * B_CE ** ((1 - B_PBAR) ** (sum(B_DICE_S1) / 3))),
    (
        "caml",
        {"absent_classes": "exclude"},
        (1 - (B_DICE_S1[0] + B_DICE_S1[1]) / 2) * B_CE ** ((1 - B_PBAR) ** ((B_DICE_S1[0] + B_DICE_S1[1]) / 2)),
    ),
    ("caml", {"pbar": "all_classes"}, (1 - sum(B_DICE_S1) / 3) * B_CE ** ((2 / 3) ** (sum(B_DICE_S1) / 3))),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "kw", "expected"), HAND_B, ids=[cfg_id(c[:2]) for c in HAND_B])
def test_hand_computed_absent_class_and_ignored_pixel(name, kw, expected, dtype):
    logits = torch.tensor([[[[math.log(2), 0.0, 100.0]], [[0.0, math.log(3), -7.0]], [[0.0, 0.0, 3.0]]]], dtype=dtype)
    target = torch.tensor([[[0, 1, IGNORE]]])
    fn = build_loss(name, **kw)
    assert_close(fn(logits, target), expected, dtype, "loss")
    assert_close(fn.parts.ce, B_CE, dtype, "ce")
    assert_close(fn.parts.p_bar, B_PBAR, dtype, "p_bar")
    assert_close(ref_eval((name, kw), logits, target)["loss"], expected, dtype, "reference")


# Case C: 1×2×1×2 where the label is not the most probable class, so the readings of p̄ differ.
# Pixel 0: logits (log 3, 0) -> p = (3/4, 1/4), label 1 (wrong). Pixel 1: logits (0, log 4) -> p = (1/5, 4/5), label 1.
C_CE = (math.log(4) + math.log(5 / 4)) / 2  # = log(5) / 2
C_DICE = ((0 + 1) / (0 + (3 / 4 + 1 / 5) + 1), (2 * (1 / 4 + 4 / 5) + 1) / (2 + (1 / 4 + 4 / 5) + 1))  # 20/39, 62/81
C_LD = 1 - (C_DICE[0] + C_DICE[1]) / 2
C_D = 1 - C_LD
C_PBARS = {"true_class": (1 / 4 + 4 / 5) / 2, "max_class": (3 / 4 + 4 / 5) / 2, "all_classes": 1 / 2}  # 21/40, 31/40
HAND_C = [
    *[("caml", {"pbar": p}, C_LD * C_CE ** ((1 - v) ** C_D), (1 - v) ** C_D) for p, v in C_PBARS.items()],
    (
        "caml",
        {"pbar": "per_pixel"},
        C_LD * (math.log(4) ** ((3 / 4) ** C_D) + math.log(5 / 4) ** ((1 / 5) ** C_D)) / 2,
        ((3 / 4) ** C_D + (1 / 5) ** C_D) / 2,
    ),
    ("caml_fixed_r", {"r": 2.0, "pbar": "max_class"}, C_LD * C_CE ** ((9 / 40) ** 2), (9 / 40) ** 2),
    ("caml_fixed_r", {"r": 0.0, "pbar": "max_class"}, C_LD * C_CE, 1.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "kw", "expected", "alpha"), HAND_C, ids=[cfg_id(c[:2]) for c in HAND_C])
def test_hand_computed_readings_of_pbar(name, kw, expected, alpha, dtype):
    logits64 = torch.tensor([[[[math.log(3), 0.0]], [[0.0, math.log(4)]]]], dtype=torch.float64)
    logits = logits64.to(dtype)
    target = torch.tensor([[[1, 1]]])
    fn = build_loss(name, **kw)
    assert_close(fn(logits, target), expected, dtype, "loss")
    assert_close(fn.parts.alpha, alpha, dtype, "alpha")
    assert_close(fn.parts.p_bar, C_PBARS["true_class"], dtype, "logged p_bar (always the true-class mean)")
    assert_close(fn.parts.dice_loss, C_LD, dtype, "dice_loss")
    reference = ref_eval((name, kw), logits64, target)
    assert reference["loss"] == pytest.approx(expected, rel=1e-12)
    assert reference["alpha"] == pytest.approx(alpha, rel=1e-12)


@pytest.mark.parametrize("confident", [True, False], ids=["ce_below_1", "ce_above_1"])
def test_max_class_alpha_path_is_label_free(confident):
    """With ``pbar="max_class"`` the gradient that α adds (``alpha_grad="pbar"`` minus ``"none"``) is
    ``∂L/∂p̄ · ∂p̄/∂x`` with ``∂p̄/∂x_ic = p_ik (δ(c = k) - p_ic) / N`` (``k`` the pixel's arg-max, whatever its
    label) and ``∂L/∂p̄ = L_Dice · L_CE^α · log L_CE · (-D (1 - p̄)^(D-1))``: positive while ``L_CE < 1``, so descent
    lowers the confidence of the predicted class; negative while ``L_CE > 1``, so descent raises it."""
    logits, target = make_inputs(3, (2, 3, 4), 3, ignore_frac=0.2, scale=1.0)
    if confident:
        logits = logits + 6.0 * F.one_hot(target.clamp_max(2), 3).permute(0, 3, 1, 2)
    fn, _, g_pbar = loss_and_grad(("caml", {"pbar": "max_class", "alpha_grad": "pbar"}), logits, target)
    _, _, g_none = loss_and_grad(("caml", {"pbar": "max_class", "alpha_grad": "none"}), logits, target)
    parts = fn.parts
    valid = (target != IGNORE).unsqueeze(1)
    p = F.softmax(logits, dim=1)
    top = p.argmax(1, keepdim=True)
    p_top = p.gather(1, top)
    p_bar = p_top[valid].mean()
    d_pbar = p_top * (F.one_hot(top.squeeze(1), 3).permute(0, 3, 1, 2) - p) * valid / valid.sum()
    d = float(parts.dice_coef)
    dl_dpbar = parts.dice_loss * parts.ce**parts.alpha * torch.log(parts.ce) * (-d * (1 - p_bar) ** (d - 1))
    assert (float(parts.ce) < 1) == confident
    assert (float(dl_dpbar) > 0) == confident
    torch.testing.assert_close(g_pbar - g_none, dl_dpbar * d_pbar, rtol=1e-8, atol=1e-12)


def test_dice_is_batch_dice_not_mean_of_per_image_dice():
    """Hand case: image 1 all class 0, image 2 all class 1, uniform predictions (p = 1/2 everywhere), s = 0.

    Batch Dice: per class Σt = 2, Σp = 2, Σtp = 1 -> Dice_c = 2/4 -> L = 1/2. Per image (image 1): class 0 has
    Dice 2·1/(2 + 1) = 2/3, class 1 has 0/(0 + 1) = 0 -> L = 2/3, so a per-image mean would give 2/3.
    """
    logits = torch.zeros(2, 2, 1, 2, dtype=torch.float64)
    target = torch.tensor([[[0, 0]], [[1, 1]]])
    fn = build_loss("dice", smooth=0.0)
    assert float(fn(logits, target)) == pytest.approx(1 / 2, rel=1e-12)
    assert float(fn(logits[:1], target[:1])) == pytest.approx(1 - (2 / 3 + 0) / 2, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# 3. Identities
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("absent", ["include", "exclude"])
@pytest.mark.parametrize("alpha_grad", ALPHA_GRADS)
@pytest.mark.parametrize("pbar", PBARS)
def test_fixed_r_zero_equals_ml_in_value_and_gradient(pbar, alpha_grad, absent):
    """α = (1 - p̄)^0 = 1, so L_Dice·L_CE^α is ML; the α path must add nothing to the gradient."""
    for seed in range(3):
        logits, target = make_inputs(seed, (2, 3, 4), 3, ignore_frac=0.2)
        _, v_ml, g_ml = loss_and_grad(("ml", {"absent_classes": absent}), logits, target)
        fn, v_r0, g_r0 = loss_and_grad(
            ("caml_fixed_r", {"r": 0.0, "pbar": pbar, "alpha_grad": alpha_grad, "absent_classes": absent}),
            logits,
            target,
        )
        torch.testing.assert_close(v_r0, v_ml, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_r0, g_ml, rtol=1e-8, atol=1e-12)
        assert float(fn.parts.alpha) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("alpha_grad", ALPHA_GRADS)
@pytest.mark.parametrize("pbar", PBARS)
def test_fixed_r_equal_to_d_equals_caml(pbar, alpha_grad):
    """With r = D of the batch, the fixed-r loss is CAML in value; and in gradient wherever CAML holds D constant."""
    for seed in range(3):
        logits, target = make_inputs(seed, (2, 4, 3), 3, ignore_frac=0.2)
        caml, v_caml, g_caml = loss_and_grad(("caml", {"pbar": pbar, "alpha_grad": alpha_grad}), logits, target)
        d = float(caml.parts.dice_coef)
        fixed, v_fix, g_fix = loss_and_grad(
            ("caml_fixed_r", {"r": d, "pbar": pbar, "alpha_grad": alpha_grad}), logits, target
        )
        torch.testing.assert_close(v_fix, v_caml, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fixed.parts.alpha, caml.parts.alpha, rtol=1e-10, atol=1e-12)
        if alpha_grad == "full":
            # CAML also differentiates through D; the fixed-r loss cannot.
            assert not torch.allclose(g_fix, g_caml, rtol=1e-4, atol=1e-8)
        else:
            torch.testing.assert_close(g_fix, g_caml, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("absent", ["include", "exclude"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_additive_is_weighted_sum_of_dice_and_ce(lam, absent):
    for seed in range(3):
        logits, target = make_inputs(seed, (2, 3, 3), 4, ignore_frac=0.2)
        _, v_add, g_add = loss_and_grad(("additive", {"lam": lam, "absent_classes": absent}), logits, target)
        _, v_dice, g_dice = loss_and_grad(("dice", {"absent_classes": absent}), logits, target)
        _, v_ce, g_ce = loss_and_grad(("ce", {}), logits, target)
        torch.testing.assert_close(v_add, lam * v_dice + (1 - lam) * v_ce, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_add, lam * g_dice + (1 - lam) * g_ce, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_all_classes_pbar_is_exactly_one_over_c(num_classes):
    for seed in range(3):
        logits, target = make_inputs(seed, (2, 3, 4), num_classes, ignore_frac=0.3, scale=5.0)
        probs, _, _ = ref.valid_pixels(np64(logits), target.numpy())
        assert ref.all_classes_pbar(probs) == pytest.approx(1 / num_classes, rel=1e-12)
        fn = build_loss("caml", pbar="all_classes")
        value = fn(logits, target)
        d = float(fn.parts.dice_coef)
        alpha = (1 - 1 / num_classes) ** d
        assert float(fn.parts.alpha) == pytest.approx(alpha, rel=1e-12)
        assert float(value) == pytest.approx(float(fn.parts.dice_loss) * float(fn.parts.ce) ** alpha, rel=1e-12)


@pytest.mark.parametrize("cfg", VALUE_CONFIGS, ids=cfg_id)
def test_ignored_pixels_do_not_matter(cfg):
    """Changing the logits of ignored pixels changes neither the loss nor the other pixels' gradients; the
    ignored pixels' own gradient is exactly zero."""
    logits, target = make_inputs(3, (2, 4, 4), 3, ignore_frac=0.4)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    other = logits.clone()
    other[ignored] = torch.randn(int(ignored.sum()), dtype=torch.float64) * 1e3
    _, v1, g1 = loss_and_grad(cfg, logits, target)
    _, v2, g2 = loss_and_grad(cfg, other, target)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    assert torch.count_nonzero(g1[ignored]) == 0


def test_custom_ignore_index():
    logits, target = make_inputs(0, (2, 3, 3), 3, ignore_frac=0.3)
    custom = target.masked_fill(target == IGNORE, -100)
    for name, kw in BASE_CONFIGS:
        a = build_loss(name, **kw)(logits, target)
        b = build_loss(name, ignore_index=-100, **kw)(logits, custom)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ignore_index_none_uses_every_pixel():
    logits, target = make_inputs(1, (1, 3, 3), 3)
    for name, kw in BASE_CONFIGS:
        value = build_loss(name, ignore_index=None, **kw)(logits, target)
        expected = ref.evaluate(name, np64(logits), target.numpy(), ignore_index=None, **kw)["loss"]
        assert_close(value, expected, torch.float64, name)


# ---------------------------------------------------------------------------------------------------------
# 4. Gradients
# ---------------------------------------------------------------------------------------------------------

#: Configs whose autograd gradient is the full derivative of the value (D and p̄ both differentiated).
FULLY_DIFFERENTIATED = [
    ("ce", {}),
    ("dice", {}),
    ("dice", {"absent_classes": "exclude"}),
    ("dice", {"smooth": 0.0}),
    ("additive", {"lam": 0.3}),
    ("ml", {}),
    ("ml", {"absent_classes": "exclude", "smooth": 0.5}),
    *[("caml", {"pbar": p, "alpha_grad": "full"}) for p in PBARS],
    ("caml", {"pbar": "true_class", "alpha_grad": "full", "absent_classes": "exclude"}),
    *[
        ("caml_fixed_r", {"r": r, "pbar": p, "alpha_grad": g})
        for p in PBARS
        for g in ("pbar", "full")
        for r in (1.0, 2.5)
    ],
]


def gradcheck_inputs(seed=0, num_classes=3):
    logits, target = make_inputs(seed, (2, 2, 3), num_classes, ignore_frac=0.0, scale=1.5)
    target[0, 0, 1] = IGNORE
    if num_classes > 3:
        target[target == num_classes - 1] = 0  # one class absent
    return logits, target


@pytest.mark.parametrize("num_classes", [3, 4])
@pytest.mark.parametrize("cfg", FULLY_DIFFERENTIATED, ids=cfg_id)
def test_gradcheck(cfg, num_classes):
    name, kw = cfg
    logits, target = gradcheck_inputs(num_classes=num_classes)
    fn = build_loss(name, **kw)
    assert torch.autograd.gradcheck(lambda x: fn(x, target), (logits.requires_grad_(True),), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("alpha_grad", ["pbar", "none"])
@pytest.mark.parametrize("pbar", PBARS)
def test_gradcheck_of_frozen_surrogate_matches_caml(pbar, alpha_grad):
    """For the partially detached options gradcheck applies to the surrogate that freezes what CAML detaches:
    D (alpha_grad="pbar": ``caml_fixed_r`` with r = D₀) or α (alpha_grad="none"). Its verified gradient must
    be CAML's at the same point."""
    logits, target = gradcheck_inputs(seed=1)
    caml, _, g_caml = loss_and_grad(("caml", {"pbar": pbar, "alpha_grad": alpha_grad}), logits, target)
    d0 = float(caml.parts.dice_coef)
    if alpha_grad == "pbar":
        surrogate_fn = build_loss("caml_fixed_r", r=d0, pbar=pbar)

        def surrogate(x):
            return surrogate_fn(x, target)
    else:
        probs0, _, labels0 = ref.valid_pixels(np64(logits), target.numpy())
        dice_fn, ce_fn = build_loss("dice"), build_loss("ce")
        if pbar == "per_pixel":
            alpha_map = torch.tensor([(1 - probs0[i, labels0[i]]) ** d0 for i in range(len(labels0))])

            def surrogate(x):
                valid = target != IGNORE
                ce_i = F.cross_entropy(x, target, ignore_index=IGNORE, reduction="none")[valid]
                return dice_fn(x, target) * (ce_i**alpha_map).mean()
        else:
            alpha0 = float(caml.parts.alpha)

            def surrogate(x):
                return dice_fn(x, target) * ce_fn(x, target) ** alpha0

    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(surrogate, (x,), eps=1e-6, atol=1e-7)
    (g_sur,) = torch.autograd.grad(surrogate(x), x)
    torch.testing.assert_close(g_caml, g_sur, rtol=1e-8, atol=1e-12)


def numerical_gradient(f, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central finite differences of a scalar function of a float64 array."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        grad[idx] = (f(xp) - f(xm)) / (2 * h)
    return grad


GRAD_REFERENCE_CONFIGS = [
    ("ce", {}),
    ("dice", {}),
    ("dice", {"absent_classes": "exclude", "smooth": 0.5}),
    ("additive", {"lam": 0.7}),
    ("ml", {}),
    *[
        (n, {**kw, "pbar": p, "alpha_grad": g})
        for n, kw in (("caml", {}), ("caml_fixed_r", {"r": 2.0}))
        for p in PBARS
        for g in ALPHA_GRADS
    ],
]


@pytest.mark.parametrize("cfg", GRAD_REFERENCE_CONFIGS, ids=cfg_id)
def test_gradient_matches_finite_differences_of_reference(cfg):
    """Autograd gradient = finite differences of the NumPy reference, where the reference freezes exactly what
    the option detaches: nothing ("full", and every loss without α), D ("pbar") or α ("none")."""
    name, kw = cfg
    logits, target = gradcheck_inputs(seed=2, num_classes=4)
    _, _, grad = loss_and_grad(cfg, logits, target)
    x0, t = np64(logits), target.numpy()
    at_x0 = ref.evaluate(name, x0, t, **kw)
    extra = {}
    if name in ("caml", "caml_fixed_r"):
        if kw["alpha_grad"] == "pbar" and name == "caml":
            extra = {"exponent": at_x0["dice_coef"]}
        elif kw["alpha_grad"] == "none":
            extra = {"alpha": at_x0["alpha_map"] if kw["pbar"] == "per_pixel" else at_x0["alpha"]}
    expected = numerical_gradient(lambda x: ref.evaluate(name, x, t, **kw, **extra)["loss"], x0)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5, atol=1e-8)


def torch_manual_caml(x, target, pbar, alpha_grad, parts_alpha=None):
    """CAML written out with plain torch ops (not the library), with the detaches each option prescribes."""
    valid = target != IGNORE
    safe = target.masked_fill(~valid, 0)
    log_p = F.log_softmax(x, dim=1)
    p = log_p.exp()
    onehot = F.one_hot(safe, x.shape[1]).permute(0, 3, 1, 2).to(x.dtype) * valid.unsqueeze(1)
    pv = p * valid.unsqueeze(1)
    dice_c = (2 * (pv * onehot).sum((0, 2, 3)) + 1.0) / (onehot.sum((0, 2, 3)) + pv.sum((0, 2, 3)) + 1.0)
    l_dice = 1 - dice_c.mean()
    d = 1 - l_dice
    if alpha_grad != "full":
        d = d.detach()
    ce_i = -log_p.gather(1, safe.unsqueeze(1)).squeeze(1)[valid]
    p_i = p.gather(1, safe.unsqueeze(1)).squeeze(1)[valid]
    if pbar == "per_pixel":
        if alpha_grad == "none":
            p_i = p_i.detach()
        return l_dice * (ce_i ** ((1 - p_i) ** d)).mean()
    if alpha_grad == "none" and parts_alpha is not None:
        alpha = parts_alpha  # the α the library logged, used as a constant
    else:
        if pbar == "true_class":
            p_bar = p_i.mean()
        elif pbar == "max_class":
            p_bar = p.amax(1)[valid].mean()
        else:
            p_bar = pv.sum() / (valid.sum() * x.shape[1])
        if alpha_grad == "none":
            p_bar = p_bar.detach()
        alpha = (1 - p_bar) ** d
    return l_dice * ce_i.mean() ** alpha


@pytest.mark.parametrize("alpha_grad", ALPHA_GRADS)
@pytest.mark.parametrize("pbar", PBARS)
def test_alpha_grad_semantics_against_manual_torch(pbar, alpha_grad):
    for seed in range(3):
        logits, target = make_inputs(seed, (2, 3, 3), 3, ignore_frac=0.2)
        fn, value, grad = loss_and_grad(("caml", {"pbar": pbar, "alpha_grad": alpha_grad}), logits, target)
        x = logits.clone().requires_grad_(True)
        expected = torch_manual_caml(x, target, pbar, alpha_grad, parts_alpha=fn.parts.alpha)
        (g_expected,) = torch.autograd.grad(expected, x)
        torch.testing.assert_close(value, expected.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grad, g_expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("pbar", PBARS)
def test_alpha_grad_options_give_different_gradients(pbar):
    logits, target = make_inputs(4, (2, 3, 3), 3, ignore_frac=0.2)
    grads = {g: loss_and_grad(("caml", {"pbar": pbar, "alpha_grad": g}), logits, target) for g in ALPHA_GRADS}
    values = [float(v) for _, v, _ in grads.values()]
    assert values[0] == values[1] == values[2]
    assert not torch.allclose(grads["pbar"][2], grads["full"][2], rtol=1e-4, atol=1e-8)
    if pbar != "all_classes":  # p̄ = 1/C is constant, so detaching it changes nothing
        assert not torch.allclose(grads["pbar"][2], grads["none"][2], rtol=1e-4, atol=1e-8)
    else:
        torch.testing.assert_close(grads["pbar"][2], grads["none"][2], rtol=1e-6, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# 5. Robustness
# ---------------------------------------------------------------------------------------------------------


def assert_finite_value_and_grad(cfg, logits, target):
    fn, value, grad = loss_and_grad(cfg, logits, target)
    assert torch.isfinite(value), f"{cfg_id(cfg)}: loss {value}"
    assert torch.isfinite(grad).all(), f"{cfg_id(cfg)}: non-finite gradient"
    for field, part in fn.parts.as_dict().items():
        assert torch.isfinite(part), f"{cfg_id(cfg)}: parts.{field} = {part}"
    return fn, value, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", ROBUST_CONFIGS, ids=cfg_id)
def test_extreme_logits(cfg, dtype):
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (2, 3, 4, 4), generator=g) * 2 - 1
    for logits in (signs.to(dtype) * 1e4, torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).to(dtype) * 1e4):
        target = torch.randint(0, 3, (2, 4, 4), generator=g)
        target[0, 0, :2] = IGNORE
        _, value, _ = assert_finite_value_and_grad(cfg, logits, target)
        if cfg[0] in REFERENCE_LOSSES:
            expected = ref_eval(cfg, logits, target)["loss"]
            assert float(value) == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("scale", [5.0, 20.0, 50.0, 1e3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", ROBUST_CONFIGS, ids=cfg_id)
def test_perfect_predictions(cfg, dtype, scale):
    """logits = scale·onehot(target): L_CE -> 0 and 1 - p̄ -> 0, where log L_CE and the fractional powers blow up."""
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 2, (2, 4, 4), generator=g)  # class 2 of 3 is absent
    logits = (F.one_hot(target, 3).permute(0, 3, 1, 2) * scale).to(dtype)
    target[1, 3, :] = IGNORE
    fn, value, _ = assert_finite_value_and_grad(cfg, logits, target)
    assert float(fn.parts.ce) == pytest.approx(ref_eval(("ce", {}), logits, target)["loss"], abs=1e-6)
    if cfg[0] in REFERENCE_LOSSES:
        # CAML keeps 1 - p̄ (or 1 - p_i) ≥ 1e-6 and L_CE ≥ 1e-6 (documented); at a perfect prediction this moves
        # the L_CE^α factor from ~1 to (1e-6)^((1e-6)^D), a relative change ≤ 14·1e-6^D (≈ 1.4e-3 at D = 2/3).
        assert float(value) == pytest.approx(ref_eval(cfg, logits, target)["loss"], rel=2e-3, abs=1e-5)
    if scale >= 50:
        assert float(fn.parts.ce) < 1e-6
        assert float(fn.parts.p_bar) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("cfg", ROBUST_CONFIGS, ids=cfg_id)
def test_classes_absent_from_batch(cfg):
    logits, _ = make_inputs(5, (2, 4, 4), 5, dtype=torch.float32)
    target = torch.zeros(2, 4, 4, dtype=torch.long)  # only the background class
    target[0, :2, :2] = 1
    assert_finite_value_and_grad(cfg, logits, target)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cfg", ROBUST_CONFIGS, ids=cfg_id)
def test_every_pixel_ignored(cfg, dtype):
    logits, _ = make_inputs(6, (2, 3, 3), 3, dtype=dtype)
    target = torch.full((2, 3, 3), IGNORE)
    fn, value, grad = assert_finite_value_and_grad(cfg, logits, target)
    assert float(fn.parts.ce) == 0.0
    assert torch.count_nonzero(grad) == 0, "no pixel is labelled: the logits cannot matter"
    if cfg[0] == "ce":
        assert float(value) == 0.0
    if cfg[0] in REFERENCE_LOSSES and cfg[1].get("smooth", 1.0) > 0:
        # L_CE = 0 and (with smoothing, or excluding absent classes) L_Dice = 0: nothing to learn.
        assert float(fn.parts.dice_loss) == 0.0
        assert float(value) == 0.0


@pytest.mark.parametrize("cfg", ROBUST_CONFIGS, ids=cfg_id)
def test_bf16_autocast_on_cpu(cfg):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(4.0)
    image = torch.randn(2, 2, 6, 6)
    target = torch.randint(0, 3, (2, 6, 6))
    target[0, 0, :3] = IGNORE
    name, kw = cfg
    fn = build_loss(name, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(image)
        assert logits.dtype == torch.bfloat16
        value = fn(logits, target)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    # Same number as the float32 computation on the bf16-rounded logits, outside autocast ...
    expected32 = build_loss(name, **kw)(logits.detach().float(), target)
    torch.testing.assert_close(value.detach(), expected32, rtol=1e-6, atol=1e-7)
    # ... and as the float64 reference on those logits.
    if name in REFERENCE_LOSSES:
        assert float(value.detach()) == pytest.approx(ref_eval(cfg, logits.float(), target)["loss"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("cfg", ROBUST_CONFIGS, ids=cfg_id)
def test_bf16_autocast_perfect_prediction(cfg):
    """Under bf16 autocast, L_CE rounds to 0 quickly; the loss and the gradients must stay finite."""
    target = torch.randint(0, 3, (1, 4, 4), generator=torch.Generator().manual_seed(2))
    weight = (F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 60).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = weight * torch.ones(1, dtype=torch.bfloat16)
        value = build_loss(cfg[0], **cfg[1])(logits.to(torch.bfloat16), target)
    value.backward()
    assert torch.isfinite(value) and value.dtype == torch.float32
    assert torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(dtype):
    logits, target = make_inputs(0, (2, 4, 4), 3, ignore_frac=0.2, dtype=dtype)
    for name, kw in BASE_CONFIGS:
        value = build_loss(name, **kw)(logits, target)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, build_loss(name, **kw)(logits.float(), target), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(2, 5),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    scale=st.sampled_from([1e-3, 0.5, 3.0, 30.0, 1e3, 1e4]),
    ignore_p=st.sampled_from([0.0, 0.3, 1.0]),
    perfect=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_finite_loss_and_gradients(n, c, h, w, scale, ignore_p, perfect, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c, (n, h, w), generator=g)
    if perfect:
        logits = F.one_hot(target, c).permute(0, 3, 1, 2).to(torch.float64) * scale
    else:
        logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale
    logits = logits.to(dtype)
    target[torch.rand(n, h, w, generator=g) < ignore_p] = IGNORE
    for cfg in ALL_OPTION_CONFIGS:
        _, value, _ = assert_finite_value_and_grad(cfg, logits, target)
        assert float(value) >= 0.0


# ---------------------------------------------------------------------------------------------------------
# 6. Overfitting one image
# ---------------------------------------------------------------------------------------------------------


def overfit_problem():
    """One 16×16 RGB image, 3 classes: background, a rectangle (1) and a disk (2), each its own colour plus noise."""
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    target = torch.zeros(16, 16, dtype=torch.long)
    target[2:7, 2:8] = 1
    target[(yy - 10.5) ** 2 + (xx - 10) ** 2 <= 16] = 2
    colours = torch.tensor([[0.1, 0.2, 0.1], [0.9, 0.3, 0.2], [0.2, 0.4, 0.9]])
    g = torch.Generator().manual_seed(0)
    image = colours[target].permute(2, 0, 1) + 0.05 * torch.randn(3, 16, 16, generator=g)
    return image[None], target[None]


#: Losses whose papers train them only next to a regional loss, trained here as ``L_partner + L``: Kervadec et al.
#: use ``L_GDL + α L_B``, Karimi & Salcudean ``L_HD + λ L_DSC``. Alone both collapse to all-background here.
REGIONAL_PARTNER = {"boundary": "generalized_dice", "hausdorff_dt": "dice"}

#: Every registered loss with its defaults, plus the CAML readings of p̄ and gradient options.
OVERFIT_CONFIGS = [(name, REQUIRED_KWARGS.get(name, {})) for name in sorted(LOSSES)] + [
    ("caml", {"pbar": "all_classes"}),
    ("caml", {"pbar": "per_pixel"}),
    ("caml", {"alpha_grad": "full"}),
    ("caml", {"alpha_grad": "none"}),
    ("caml_fixed_r", {"r": 3.0, "pbar": "per_pixel"}),
]


@pytest.mark.parametrize("cfg", OVERFIT_CONFIGS, ids=cfg_id)
def test_overfits_one_image(cfg):
    """Every registered loss trains two 3×3 convolutions to ≥ 99 % pixel accuracy and ≥ 0.95 IoU per class."""
    name, kw = cfg
    image, target = overfit_problem()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    loss_fn = build_loss(name, **kw)
    partner = build_loss(REGIONAL_PARTNER[name]) if name in REGIONAL_PARTNER else None
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    max_steps = 250
    losses = []
    for _ in range(max_steps):
        logits = net(image)
        pred = logits.argmax(1)
        acc = (pred == target).float().mean().item()
        ious = [(((pred == c) & (target == c)).sum() / ((pred == c) | (target == c)).sum()).item() for c in range(3)]
        if acc >= 0.99 and min(ious) >= 0.95:
            break
        loss = loss_fn(logits, target)
        assert torch.isfinite(loss)
        losses.append(float(loss.detach()))
        if partner is not None:
            loss = loss + partner(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    else:
        pytest.fail(f"{cfg_id(cfg)}: accuracy {acc:.3f}, IoUs {ious} after {max_steps} steps")
    assert len(losses) >= 5, "the untrained network must not already solve the task"
    assert float(loss_fn(logits, target).detach()) < losses[0]
