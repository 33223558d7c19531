"""Expected calibration error against hand computation and torchmetrics; the histogram streams and merges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from lightning_seg.evaluation import CalibrationHistogram, reliability_diagram


def logits_of(probabilities) -> torch.Tensor:
    """N×C×1×1 logits whose softmax is ``probabilities`` (rows of N×C)."""
    return torch.tensor(probabilities, dtype=torch.float64).log()[:, :, None, None]


#: Four pixels of two classes: (p_class0, label). Top label: bin [0.8, 0.9) holds two pixels of confidence
#: 0.85, one right: |1 − 1.7| = 0.7; bin [0.6, 0.7) one right pixel at 0.65: 0.35; bin [0.9, 1] one right
#: pixel at 0.95: 0.05. ECE = (0.7 + 0.35 + 0.05) / 4 = 0.275. Class-wise, class 0: bin [0.8, 0.9) 0.7, bin
#: [0.3, 0.4) (0.35, not class 0) 0.35, bin [0.9, 1] 0.05: 0.275 again; class 1 mirrors class 0.
FOUR_PIXELS = [(0.85, 0), (0.85, 1), (0.35, 1), (0.95, 0)]

ECE_CASES = [
    # (pixels, bins, top-label ECE, class-wise ECEs)
    (FOUR_PIXELS, 10, 0.275, [0.275, 0.275]),
    # one bin: top label |3 − (0.85 + 0.85 + 0.65 + 0.95)| / 4 = 0.075; class 0 |2 − 3.0| / 4 = 0.25
    (FOUR_PIXELS, 1, 0.075, [0.25, 0.25]),
    # perfectly right and confident: 0 in every bin
    ([(1.0, 0), (0.0, 1)], 15, 0.0, [0.0, 0.0]),
]


@pytest.mark.parametrize(("pixels", "bins", "ece", "class_ece"), ECE_CASES)
def test_ece_hand_computed(pixels, bins, ece, class_ece):
    histogram = CalibrationHistogram(2, bins)
    logits = logits_of([(p, 1 - p) for p, _ in pixels])
    histogram.update(logits, torch.tensor([label for _, label in pixels])[:, None, None])
    assert histogram.ece() == pytest.approx(ece, abs=1e-6)  # softmax in float32
    assert histogram.class_ece() == pytest.approx(class_ece, abs=1e-6)


def test_probabilities_0_and_1_fall_in_the_first_and_last_bins():
    histogram = CalibrationHistogram(2, bins=4)
    histogram.update(torch.tensor([[[[100.0]], [[0.0]]]]), torch.tensor([[[0]]]))  # softmax exactly (1, 0)
    assert histogram.count[0].tolist() == [0, 0, 0, 1]  # class 0 at p = 1
    assert histogram.count[1].tolist() == [1, 0, 0, 0]  # class 1 at p = 0
    assert histogram.count[2].tolist() == [0, 0, 0, 1]  # top label


def test_ignored_pixels_are_left_out():
    logits = logits_of([(0.9, 0.1), (0.2, 0.8)])
    histogram = CalibrationHistogram(2, bins=10)
    histogram.update(logits, torch.tensor([0, 255])[:, None, None], ignore_index=255)
    assert histogram.count[2].sum() == 1
    assert histogram.ece() == pytest.approx(0.1)


@pytest.mark.parametrize("seed", range(3))
def test_matches_torchmetrics_top_label_and_class_wise(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 4, 16, 16, generator=g) * 2
    target = torch.randint(0, 4, (3, 16, 16), generator=g)
    histogram = CalibrationHistogram(4, bins=15)
    histogram.update(logits, target)
    probs = logits.softmax(1).movedim(1, -1).reshape(-1, 4)
    labels = target.reshape(-1)
    want = multiclass_calibration_error(probs, labels, num_classes=4, n_bins=15, norm="l1").item()
    assert histogram.ece() == pytest.approx(want, abs=1e-6)
    for c, got in enumerate(histogram.class_ece()):
        want = binary_calibration_error(probs[:, c].contiguous(), (labels == c).long(), n_bins=15, norm="l1").item()
        assert got == pytest.approx(want, abs=1e-6)


def test_batches_add_up_and_histograms_merge():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (4, 8, 8), generator=g)
    whole = CalibrationHistogram(3)
    whole.update(logits, target)
    first, second = CalibrationHistogram(3), CalibrationHistogram(3)
    first.update(logits[:1], target[:1])
    first.update(logits[1:2], target[1:2])
    second.update(logits[2:], target[2:])
    first.merge(second)
    for name in ("count", "confidence", "hits"):
        np.testing.assert_allclose(getattr(first, name), getattr(whole, name), rtol=1e-12)
    with pytest.raises(ValueError, match="different classes or bins"):
        first.merge(CalibrationHistogram(3, bins=5))


def test_calibrated_probabilities_have_small_ece_and_overconfident_ones_large():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, 64, 64, generator=g) * 2
    labels = torch.distributions.Categorical(logits=logits.movedim(1, -1)).sample()  # drawn from p itself
    calibrated, overconfident = CalibrationHistogram(3), CalibrationHistogram(3)
    calibrated.update(logits, labels)
    overconfident.update(logits * 3, labels)
    assert calibrated.ece() < 0.01 < 0.1 < overconfident.ece()


def test_bad_input_and_empty_histogram():
    histogram = CalibrationHistogram(3)
    assert math.isnan(histogram.ece())
    with pytest.raises(ValueError, match="expected logits N×3×H×W and target N×H×W"):
        histogram.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes ≥ 2 and bins ≥ 1"):
        CalibrationHistogram(3, bins=0)


def test_record_and_reliability_diagram(tmp_path):
    histogram = CalibrationHistogram(2, bins=10)
    histogram.update(
        logits_of([(p, 1 - p) for p, _ in FOUR_PIXELS]), torch.tensor([y for _, y in FOUR_PIXELS])[:, None, None]
    )
    record = histogram.to_dict(["a", "b"])
    assert record["binning"] == "equal-width" and record["pixels"] == 4
    assert record["class_ece"] == pytest.approx({"a": 0.275, "b": 0.275})
    assert record["top_label"]["count"][8] == 2 and record["top_label"]["accuracy"][8] == 0.5
    assert record["top_label"]["confidence"][0] is None  # empty bins have no mean
    path = reliability_diagram(histogram, ["a", "b"], tmp_path / "r.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
