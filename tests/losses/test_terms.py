"""The shared terms: the fused softmax statistics and their closed-form backward, checked directly, and the
promise that the paper's losses never build an N×C×H×W one-hot or probability map of their own."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lightning_seg.losses import build_loss, compute_terms
from lightning_seg.losses.base import _SoftmaxStats, first_argmax

IGNORE = 255
PAPER_CONFIGS = [
    ("ce", {}),
    ("dice", {}),
    ("additive", {}),
    ("ml", {}),
    *[("caml", {"pbar": p}) for p in ("true_class", "all_classes", "per_pixel", "max_class")],
    ("caml_fixed_r", {"r": 2.0}),
]

pytestmark = pytest.mark.usefixtures("single_thread")


def inputs(seed=0, n=2, c=3, h=3, w=4, ignore=True):
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n, h, w), generator=g)
    if ignore:
        target[0, 0, :2] = IGNORE
    return logits, target


@pytest.mark.parametrize("with_max", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax_stats_gradcheck(masked, with_max):
    """Every output against finite differences, each with its own random upstream gradient (gradcheck's
    Jacobian covers all four outputs), with and without ignored pixels."""
    logits, target = inputs()
    valid = target != IGNORE if masked else None
    safe = target.masked_fill(target == IGNORE, 0)

    def stats(x):
        return tuple(t for t in _SoftmaxStats.apply(x, safe, valid, with_max) if t is not None)

    assert torch.autograd.gradcheck(stats, (logits.requires_grad_(True),), eps=1e-6, atol=1e-8)


def test_softmax_stats_values():
    logits, target = inputs()
    valid = target != IGNORE
    safe = target.masked_fill(~valid, 0)
    ce_map, pt_map, prob_sum, max_map = _SoftmaxStats.apply(logits, safe, valid, True)
    p = F.softmax(logits, dim=1)
    expected_ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    torch.testing.assert_close(ce_map, expected_ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pt_map, p.gather(1, safe.unsqueeze(1)).squeeze(1) * valid, rtol=1e-12, atol=0)
    torch.testing.assert_close(prob_sum, (p * valid.unsqueeze(1)).sum((0, 2, 3)), rtol=1e-12, atol=0)
    torch.testing.assert_close(max_map, p.amax(1) * valid, rtol=1e-12, atol=0)


def test_second_backward_through_the_same_graph_gives_the_same_gradient():
    """The first backward reuses the probabilities' buffer for the gradient; a second one recomputes them."""
    logits, target = inputs(1)
    x = logits.clone().requires_grad_(True)
    loss = build_loss("caml", pbar="max_class", alpha_grad="full")(x, target)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_first_argmax_takes_the_first_class_on_ties():
    probs = torch.tensor([[0.2, 0.4, 0.4], [0.5, 0.5, 0.0], [0.1, 0.3, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    probs = probs.T.reshape(1, 3, 2, 2)
    assert first_argmax(probs, probs.amax(1)).flatten().tolist() == [1, 0, 2, 0]
    assert torch.equal(first_argmax(probs, probs.amax(1)), probs.argmax(1))


@pytest.mark.parametrize(("name", "kw"), PAPER_CONFIGS)
def test_paper_losses_build_no_full_maps(name, kw):
    logits, target = inputs(2)
    terms = compute_terms(logits.requires_grad_(True), target, IGNORE, max_prob=kw.get("pbar") == "max_class")
    build_loss(name, **kw).combine(terms)
    assert not {"probs", "log_probs", "onehot"} & set(vars(terms))


def test_lazy_maps_are_the_full_ones():
    logits, target = inputs(3)
    terms = compute_terms(logits, target, IGNORE)
    valid = (target != IGNORE).unsqueeze(1)
    torch.testing.assert_close(terms.probs, F.softmax(logits, dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.log_probs, F.log_softmax(logits, dim=1), rtol=1e-12, atol=0)
    onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), 3).permute(0, 3, 1, 2) * valid
    torch.testing.assert_close(terms.onehot, onehot.double(), rtol=0, atol=0)
    torch.testing.assert_close(terms.class_counts, onehot.sum((0, 2, 3)).double(), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "kw"), PAPER_CONFIGS)
def test_without_ignored_pixels_the_unmasked_path_is_the_same(name, kw):
    """With no pixel equal to ignore_index the loss skips the masks; the result must not change."""
    logits, target = inputs(4, ignore=False)
    fast = build_loss(name, **kw)
    x = logits.clone().requires_grad_(True)
    value = fast(x, target)
    (grad,) = torch.autograd.grad(value, x)
    x2 = logits.clone().requires_grad_(True)
    slow = compute_terms(x2, target, IGNORE, max_prob=kw.get("pbar") == "max_class")  # masks of all ones
    slow_value, _ = build_loss(name, **kw).combine(slow)
    (slow_grad,) = torch.autograd.grad(slow_value, x2)
    torch.testing.assert_close(value, slow_value, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(grad, slow_grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("name", "kw"), PAPER_CONFIGS)
def test_channels_last_logits(name, kw):
    """A model in channels-last memory format gives channels-last logits: same value and gradient."""
    logits, target = inputs(5, c=4, h=5, w=6)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = logits.clone().to(memory_format=memory_format).requires_grad_(True)
        value = build_loss(name, **kw)(x, target)
        (grad,) = torch.autograd.grad(value, x)
        results.append((value, grad))
    assert logits.to(memory_format=torch.channels_last).stride() != logits.stride()
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-12, atol=1e-15)
