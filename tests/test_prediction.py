"""predicted_classes: the class map every metric and figure uses, against torch.argmax and by hand."""

import math

import pytest
import torch

from lightning_seg.prediction import predicted_classes

NAN, INF = math.nan, math.inf

# per-pixel scores over the classes -> the expected class, written by hand
CASES = [
    ([0.1, 0.9], 1),
    ([0.9, 0.1], 0),
    ([0.5, 0.5], 0),  # a tie: the first class
    ([0.2, 0.7, 0.7], 1),
    ([-INF, -INF, -1e30], 2),
    ([INF, INF], 0),
    ([0.3, NAN, 0.9], 1),  # NaN is the largest, as in torch.argmax
    ([NAN, NAN], 0),
    ([-0.0, 0.0], 0),  # equal values
]


@pytest.mark.parametrize(("scores", "expected"), CASES)
def test_the_class_of_one_pixel(scores, expected):
    logits = torch.tensor(scores).view(1, -1, 1, 1)
    assert predicted_classes(logits).tolist() == [[[expected]]]
    assert torch.equal(predicted_classes(logits), logits.argmax(dim=1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("classes", [2, 5, 300])
def test_equals_argmax_on_many_ties(dtype, classes):
    g = torch.Generator().manual_seed(classes)
    # few distinct values, so most pixels have ties for the largest
    logits = torch.randint(0, 3, (3, classes, 9, 7), generator=g).to(dtype)
    logits[0, :, 0, 0] = NAN
    out = predicted_classes(logits)
    assert out.dtype == torch.int64 and out.shape == (3, 9, 7)
    assert torch.equal(out, logits.argmax(dim=1))


def test_non_contiguous_input():
    logits = torch.randn(2, 7, 6, 4).permute(0, 1, 3, 2)
    assert torch.equal(predicted_classes(logits), logits.argmax(dim=1))
