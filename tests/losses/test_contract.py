"""The input contract of every registered loss and the constructor checks of the paper losses: each violation is a
``ValueError`` whose message says what is wrong."""

from __future__ import annotations

import re

import pytest
import torch

from lightning_seg.losses import LOSSES, build_loss

REQUIRED_KWARGS = {"caml_fixed_r": {"r": 1.0}}
PAPER_LOSSES = ["ce", "dice", "additive", "ml", "caml", "caml_fixed_r"]
ALL_LOSSES = sorted(LOSSES)


pytestmark = pytest.mark.usefixtures("single_thread")


def make(name, **kw):
    return build_loss(name, **{**REQUIRED_KWARGS.get(name, {}), **kw})


def good_inputs(n=2, c=3, h=4, w=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, h, w, generator=g), torch.randint(0, c, (n, h, w), generator=g)


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_valid_inputs_give_a_scalar(name):
    logits, target = good_inputs()
    target[0, 0, 0] = 255
    value = make(name)(logits, target)
    assert value.shape == ()
    assert torch.isfinite(value)


BAD_INPUTS = {
    "logits_3d": (lambda x, t: (x[0], t), r"logits must be N×C×H×W, got shape \(3, 4, 5\)"),
    "logits_5d": (lambda x, t: (x[..., None], t), r"logits must be N×C×H×W"),
    "int_logits": (lambda x, t: ((x * 10).long(), t), r"logits must be a float tensor, got dtype torch.int64"),
    "bool_logits": (lambda x, t: (x > 0, t), r"logits must be a float tensor"),
    "one_channel": (lambda x, t: (x[:, :1], t.clamp(max=0)), r"at least 2 channels.*got 1"),
    "target_2d": (lambda x, t: (x, t[0]), r"target must be N×H×W, got shape \(4, 5\)"),
    "target_4d": (lambda x, t: (x, t[:, None]), r"target must be N×H×W, got shape \(2, 1, 4, 5\)"),
    "float_target": (lambda x, t: (x, t.float()), r"target must be a long \(int64\) tensor.*torch.float32"),
    "int32_target": (lambda x, t: (x, t.int()), r"target must be a long \(int64\).*torch.int32"),
    "mismatched_n": (lambda x, t: (x, t[:1]), r"target shape \(1, 4, 5\) does not match logits shape \(2, 3, 4, 5\)"),
    "mismatched_h": (lambda x, t: (x[:, :, :3], t), r"does not match logits shape.*expected \(2, 3, 5\)"),
    "mismatched_w": (lambda x, t: (x[..., :4], t), r"does not match logits shape.*expected \(2, 4, 4\)"),
    "label_eq_c": (lambda x, t: (x, t.index_fill(2, torch.tensor([1]), 3)), r"label values \[3\] outside \[0, 2\]"),
    "label_large": (lambda x, t: (x, t.index_fill(1, torch.tensor([0]), 7)), r"label values \[7\] outside \[0, 2\]"),
    "label_negative": (lambda x, t: (x, t.index_fill(2, torch.tensor([0]), -1)), r"label values \[-1\] outside"),
    "label_254": (
        lambda x, t: (x, t.index_fill(2, torch.tensor([0]), 254)),
        r"\[254\] outside \[0, 2\] or ignore_index=255",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_bad_inputs_raise(name, case):
    transform, message = BAD_INPUTS[case]
    logits, target = transform(*good_inputs())
    fn = make(name)
    with pytest.raises(ValueError, match=message):
        fn(logits, target)
    assert fn.parts is None


@pytest.mark.parametrize("name", PAPER_LOSSES)
def test_non_tensor_inputs_raise(name):
    logits, target = good_inputs()
    with pytest.raises(ValueError, match="must be torch.Tensor"):
        make(name)(logits.numpy(), target)
    with pytest.raises(ValueError, match="must be torch.Tensor"):
        make(name)(logits, target.tolist())


@pytest.mark.parametrize("name", PAPER_LOSSES)
def test_several_bad_labels_are_listed(name):
    logits, target = good_inputs()
    target[0, 0, :3] = torch.tensor([5, -2, 9])
    with pytest.raises(ValueError, match=r"label values \[-2, 5, 9\] outside"):
        make(name)(logits, target)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_ignore_index_none_makes_255_an_invalid_label(name):
    logits, target = good_inputs()
    target[1, 2, 3] = 255
    make(name)(logits, target)  # the default ignore_index=255 accepts it
    with pytest.raises(ValueError, match=r"label values \[255\] outside \[0, 2\]$"):
        make(name, ignore_index=None)(logits, target)


@pytest.mark.parametrize("name", PAPER_LOSSES)
def test_custom_ignore_index_is_accepted_and_255_is_not(name):
    logits, target = good_inputs()
    target[0, 0, 0] = -100
    make(name, ignore_index=-100)(logits, target)
    target[0, 0, 1] = 255
    with pytest.raises(ValueError, match=r"\[255\] outside \[0, 2\] or ignore_index=-100"):
        make(name, ignore_index=-100)(logits, target)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", PAPER_LOSSES)
def test_float_dtypes_are_accepted(name, dtype):
    logits, target = good_inputs()
    value = make(name)(logits.to(dtype), target)
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


# --------------------------------------------------------------------------------------------------------------
# Registry and constructor arguments
# --------------------------------------------------------------------------------------------------------------


def test_paper_losses_are_registered():
    assert set(PAPER_LOSSES) <= set(LOSSES)
    for name in PAPER_LOSSES:
        assert LOSSES[name].name == name
        assert type(make(name)) is LOSSES[name]


def test_unknown_loss_name_lists_registered_names():
    with pytest.raises(ValueError, match=r"unknown loss 'cmal'") as info:
        build_loss("cmal")
    message = str(info.value)
    listed = message.split("registered: ", 1)[1].split(", ")
    assert listed == sorted(LOSSES)
    for name in PAPER_LOSSES:
        assert name in listed


@pytest.mark.parametrize("lam", [-0.1, 1.5, -1e-9, float("nan")])
def test_invalid_lam(lam):
    with pytest.raises(ValueError, match=r"lam must lie in \[0, 1\]"):
        build_loss("additive", lam=lam)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_valid_lam(lam):
    assert build_loss("additive", lam=lam).lam == lam


@pytest.mark.parametrize("name", ["caml", "caml_fixed_r"])
@pytest.mark.parametrize("pbar", ["mean", "True_Class", "", "perpixel"])
def test_invalid_pbar(name, pbar):
    with pytest.raises(
        ValueError,
        match=re.escape(f"pbar must be 'true_class', 'all_classes', 'per_pixel' or 'max_class', got {pbar!r}"),
    ):
        make(name, pbar=pbar)


@pytest.mark.parametrize("name", ["caml", "caml_fixed_r"])
@pytest.mark.parametrize("alpha_grad", ["p_bar", "all", "detach", None])
def test_invalid_alpha_grad(name, alpha_grad):
    with pytest.raises(ValueError, match=r"alpha_grad must be 'pbar', 'none' or 'full'"):
        make(name, alpha_grad=alpha_grad)


@pytest.mark.parametrize("name", PAPER_LOSSES)
@pytest.mark.parametrize("absent", ["includes", "ignore", "", None])
def test_invalid_absent_classes(name, absent):
    with pytest.raises(ValueError, match=r"absent_classes must be 'include' or 'exclude'"):
        make(name, absent_classes=absent)


@pytest.mark.parametrize("name", PAPER_LOSSES)
@pytest.mark.parametrize("smooth", [-1.0, -1e-6])
def test_negative_smooth(name, smooth):
    with pytest.raises(ValueError, match=r"smooth must be ≥ 0"):
        make(name, smooth=smooth)


@pytest.mark.parametrize("name", ["caml", "caml_fixed_r"])
@pytest.mark.parametrize("r", [-1.0, -1e-3])
def test_negative_r(name, r):
    with pytest.raises(ValueError, match=r"r must be ≥ 0"):
        build_loss(name, r=r)


def test_fixed_r_requires_r():
    with pytest.raises(TypeError):
        build_loss("caml_fixed_r")


@pytest.mark.parametrize("r", [0.0, 1.0, 5.0])
def test_valid_r(r):
    assert build_loss("caml_fixed_r", r=r).r == r


@pytest.mark.parametrize("name", ["ce", "dice", "ml"])
def test_unexpected_keyword_is_rejected(name):
    with pytest.raises(TypeError):
        build_loss(name, lam=0.5)


@pytest.mark.parametrize("name", PAPER_LOSSES)
def test_parts_only_after_a_call(name):
    fn = make(name)
    assert fn.parts is None
    fn(*good_inputs())
    assert set(fn.parts.as_dict()) == {"loss", "ce", "dice_loss", "p_bar", "dice_coef", "alpha"}
