"""Expected calibration error over every test pixel, accumulated batch by batch, and the reliability diagram.

Two calibrations are measured, both with ``bins`` **equal-width** bins ``[k/B, (k+1)/B)`` of the predicted
probability (the last bin closed at 1), 15 by default as in Guo et al. 2017:

- **top-label** (Guo et al.): per pixel the confidence ``max_c p_c`` and whether ``argmax_c p_c`` is the target
  class;
- **class-wise**, one per class ``c`` (Kull et al. 2019; its mean over classes is Nixon et al.'s static
  calibration error): per pixel ``p_c`` and whether the target is ``c``, so every pixel counts for every class.

``ECE = Σ_b (n_b / N) · |acc_b − conf_b| = (1/N) Σ_b |Σ_{i∈b} hit_i − Σ_{i∈b} p_i|`` over the N non-ignored
pixels, where ``acc_b`` is the share of hits and ``conf_b`` the mean probability in bin b. Equal-width bins
make the histogram a fixed-size sum: it is exact over millions of pixels without storing them, and two
histograms add. (Equal-mass bins would need every probability kept until the end.) Probabilities are the
softmax of the logits in float32; sums are kept in float64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: Default number of equal-width bins (Guo et al. 2017).
DEFAULT_BINS = 15


class CalibrationHistogram:
    """Per bin: pixel count, sum of probabilities and sum of hits, for the top label and every class.

    Row ``c < C`` of each array is class ``c`` (class-wise); row ``C`` is the top label.

    Args:
        num_classes: C.
        bins: number of equal-width bins in [0, 1].

    Example:
        >>> h = CalibrationHistogram(2, bins=2)
        >>> h.update(torch.tensor([[[[2.0]], [[0.0]]]]), torch.tensor([[[0]]]))
        >>> round(h.ece(), 4)  # one pixel, confidence 0.8808 in the right class: |1 - 0.8808|
        0.1192
    """

    def __init__(self, num_classes: int, bins: int = DEFAULT_BINS) -> None:
        if num_classes < 2 or bins < 1:
            raise ValueError(f"need num_classes ≥ 2 and bins ≥ 1, got {num_classes} and {bins}")
        self.num_classes = num_classes
        self.bins = bins
        shape = (num_classes + 1, bins)
        self.count = np.zeros(shape, np.float64)
        self.confidence = np.zeros(shape, np.float64)
        self.hits = np.zeros(shape, np.float64)

    def bin_index(self, probability: Tensor) -> Tensor:
        """The bin of each probability: ``floor(p·B)``, with p = 1 in the last bin."""
        return (probability * self.bins).long().clamp_(0, self.bins - 1)

    def update(self, logits: Tensor, target: Tensor, ignore_index: int | None = None) -> None:
        """Add one batch: ``logits`` N×C×H×W, ``target`` N×H×W (pixels at ``ignore_index`` are left out)."""
        if (
            logits.ndim != 4
            or logits.shape[1] != self.num_classes
            or logits.shape[:1] + logits.shape[2:] != target.shape
        ):
            raise ValueError(
                f"expected logits N×{self.num_classes}×H×W and target N×H×W, got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        with torch.no_grad():
            probs = logits.detach().float().softmax(dim=1).movedim(1, -1).reshape(-1, self.num_classes)
            labels = target.reshape(-1)
            if ignore_index is not None:
                keep = labels != ignore_index
                probs, labels = probs[keep], labels[keep]
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"target has labels outside [0, {self.num_classes}) (ignore_index={ignore_index})")
            hit = torch.nn.functional.one_hot(labels, self.num_classes).to(torch.float64)
            confidence, top = probs.max(dim=1)
            probs = torch.cat([probs, confidence[:, None]], dim=1).to(torch.float64)  # column C: the top label
            hit = torch.cat([hit, (top == labels).to(torch.float64)[:, None]], dim=1)
            rows = torch.arange(self.num_classes + 1, device=probs.device)
            flat = (rows * self.bins + self.bin_index(probs)).reshape(-1)
            size = (self.num_classes + 1) * self.bins
            for array, weights in ((self.count, None), (self.confidence, probs), (self.hits, hit)):
                sums = torch.bincount(flat, None if weights is None else weights.reshape(-1), minlength=size)
                array += sums.reshape(self.count.shape).cpu().numpy()

    def merge(self, other: CalibrationHistogram) -> None:
        """Add another histogram of the same shape (e.g. from another process)."""
        if (other.num_classes, other.bins) != (self.num_classes, self.bins):
            raise ValueError("cannot merge calibration histograms of different classes or bins")
        self.count += other.count
        self.confidence += other.confidence
        self.hits += other.hits

    def _ece(self, row: int) -> float:
        total = self.count[row].sum()
        if total == 0:
            return float("nan")
        return float(np.abs(self.hits[row] - self.confidence[row]).sum() / total)

    def ece(self) -> float:
        """Top-label ECE; NaN before any pixel."""
        return self._ece(self.num_classes)

    def class_ece(self) -> list[float]:
        """Class-wise ECE of every class."""
        return [self._ece(c) for c in range(self.num_classes)]

    def curve(self, row: int) -> dict[str, list]:
        """Per bin of row ``row`` (a class, or ``num_classes`` for the top label): count, mean probability and
        observed frequency (``None`` for empty bins)."""
        count = self.count[row]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_p = self.confidence[row] / count
            freq = self.hits[row] / count
        return {
            "count": [int(n) for n in count],
            "confidence": [None if n == 0 else float(v) for n, v in zip(count, mean_p, strict=True)],
            "accuracy": [None if n == 0 else float(v) for n, v in zip(count, freq, strict=True)],
        }

    def to_dict(self, class_names: list[str]) -> dict:
        """The record written with a test: binning, ECEs and per-bin curves."""
        return {
            "binning": "equal-width",
            "bins": self.bins,
            "pixels": int(self.count[self.num_classes].sum()),
            "ece": self.ece(),
            "class_ece": dict(zip(class_names, self.class_ece(), strict=True)),
            "top_label": self.curve(self.num_classes),
            "classes": {name: self.curve(c) for c, name in enumerate(class_names)},
        }


def reliability_diagram(histogram: CalibrationHistogram, class_names: list[str], path: str | Path, title: str = ""):
    """Write the reliability diagram PNG and return its path.

    Left: the top label, accuracy per confidence bin (bars) against the diagonal of perfect calibration,
    the gap to the bin's mean confidence hatched, and below it the share of pixels per bin (log scale).
    Right: the class-wise curves, observed frequency of each class against its mean predicted probability
    per bin (empty bins left out).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot: no backend is chosen or changed
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(11, 6))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1))
    top, share, classes = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[:, 1])
    edges = np.linspace(0.0, 1.0, histogram.bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / histogram.bins
    curve = histogram.curve(histogram.num_classes)
    accuracy = np.array([np.nan if a is None else a for a in curve["accuracy"]], dtype=float)
    confidence = np.array([np.nan if c is None else c for c in curve["confidence"]], dtype=float)
    filled = ~np.isnan(accuracy)
    top.bar(centres[filled], accuracy[filled], width=width, edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(  # hatched outline, so the accuracy bar stays visible under it
        centres[filled],
        np.abs(confidence - accuracy)[filled],
        bottom=np.minimum(accuracy, confidence)[filled],
        width=width,
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        label="gap to the bin's mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"top label: ECE {100 * histogram.ece():.2f} %")
    top.legend(loc="upper left", fontsize=8)
    counts = np.array(curve["count"], dtype=float)
    shares = counts / max(counts.sum(), 1.0)
    share.bar(centres, shares, width=width, color="tab:gray", edgecolor="black")
    lowest = shares[shares > 0].min() if (shares > 0).any() else 1.0
    share.set(
        xlim=(0, 1),
        yscale="log",
        ylim=(10 ** np.floor(np.log10(lowest)), 1.0),  # whole decades, however close the bars are
        xlabel="confidence (largest class probability)",
        ylabel="share of pixels",
    )
    share.yaxis.set_minor_formatter(NullFormatter())
    cmap = colormaps["tab10"]
    for c, (name, ece) in enumerate(zip(class_names, histogram.class_ece(), strict=True)):
        points = histogram.curve(c)
        xs = [x for x in points["confidence"] if x is not None]
        ys = [y for y in points["accuracy"] if y is not None]
        classes.plot(xs, ys, "o-", color=cmap(c % cmap.N), label=f"{name}: ECE {100 * ece:.2f} %")
    classes.plot([0, 1], [0, 1], "k--")
    classes.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted probability of the class",
        ylabel="observed frequency of the class",
        title="class-wise",
    )
    classes.legend(loc="upper left", fontsize=8)
    pixels = int(counts.sum())
    fig.suptitle(f"{title + ': ' if title else ''}{histogram.bins} equal-width bins, {pixels:,} test pixels")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
