"""Figures of the paper, computed from the registered losses with autograd.

``python -m lightning_seg.figures gradients --out DIR`` writes

- ``gradients.png`` (paper Fig. 1): loss value and gradient magnitude ``|∂L/∂p|`` against the predicted
  probability ``p`` of the true class, binary case, for CE, Dice, additive (λ = 0.5), ML and CAML;
- ``caml_vs_ml.png`` (Fig. 2/5): CAML against ML, with CAML's exponent α = (1 − p̄)^D;
- ``gradients.csv``: the curves.

**The batch** (:func:`sweep_batch`): one image, two classes, ``size × size`` pixels (N = size², 16 by
default). The left half of the columns is foreground (class 1), the right half background (class 0). Every
pixel but one predicts its true class with the fixed probability ``rest_p`` (0.7 by default); the swept
pixel, (0, 0), a foreground pixel, predicts it with probability ``p``. Each pixel's logits are
``(log(1 − q), log q)`` for its foreground probability ``q``, so the softmax returns exactly ``q``; ``p`` is
the autograd leaf, so ``∂L/∂p`` is the derivative of the loss *as implemented* (registry, clamps, detach
choices and all) along the binary simplex, through the softmax. Nothing is re-derived by hand: for CE it
comes out as ``−1/(N p)``, which the tests check.

``python -m lightning_seg.figures overlays --config C.yaml [--config …] --ckpt-a A.ckpt --ckpt-b B.ckpt --out DIR``
writes ``overlays.png`` (Fig. 3/4): image | ground truth | prediction of A | prediction of B for the first
test images of the configured data, one row per image, with per-image mIoU of each prediction.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .callbacks.checkpoint import inspect_checkpoint
from .losses import build_loss
from .run import RunFolder

#: Label → (registry name, arguments) of the losses in the gradient figures.
GRADIENT_LOSSES: dict[str, tuple[str, dict]] = {
    "CE": ("ce", {}),
    "Dice": ("dice", {}),
    "Additive (λ=0.5)": ("additive", {"lam": 0.5}),
    "ML": ("ml", {}),
    "CAML": ("caml", {}),
}
#: One colour per loss, shared by every figure.
LOSS_COLOURS = {
    "CE": "tab:blue",
    "Dice": "tab:orange",
    "Additive (λ=0.5)": "tab:green",
    "ML": "tab:red",
    "CAML": "tab:purple",
}


def sweep_batch(p: torch.Tensor, size: int = 4, rest_p: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1×2×size×size, float64) and target (1×size×size) of the swept batch; see the module docstring.

    ``p`` is a 0-d tensor (the swept pixel's true-class probability); gradients flow from the logits to it.
    """
    if size < 2:
        raise ValueError("size must be ≥ 2 (the batch needs a foreground and a background column)")
    target = torch.zeros(1, size, size, dtype=torch.long)
    target[..., : size // 2] = 1
    fg_prob = torch.where(
        target == 1, torch.tensor(rest_p, dtype=torch.float64), torch.tensor(1 - rest_p, dtype=torch.float64)
    )
    fg_prob = fg_prob.clone()
    fg_prob = torch.cat([p.reshape(1).to(torch.float64), fg_prob.flatten()[1:]]).reshape(1, size, size)
    logits = torch.stack([torch.log1p(-fg_prob), torch.log(fg_prob)], dim=1)
    return logits, target


def loss_curve(
    name: str, ps: Sequence[float], size: int = 4, rest_p: float = 0.7, **loss_kwargs
) -> dict[str, np.ndarray]:
    """Value, ``∂L/∂p`` and the logged parts (``alpha``, ``p_bar``, ``dice_coef``) of loss ``name`` at each ``p``."""
    loss_fn = build_loss(name, **loss_kwargs)
    out: dict[str, list[float]] = {k: [] for k in ("p", "value", "grad", "alpha", "p_bar", "dice_coef")}
    for value in ps:
        p = torch.tensor(float(value), dtype=torch.float64, requires_grad=True)
        logits, target = sweep_batch(p, size, rest_p)
        loss = loss_fn(logits, target)
        (grad,) = torch.autograd.grad(loss, p)
        out["p"].append(float(value))
        out["value"].append(loss.item())
        out["grad"].append(grad.item())
        for key in ("alpha", "p_bar", "dice_coef"):
            out[key].append(getattr(loss_fn.parts, key).item())
    return {k: np.asarray(v) for k, v in out.items()}


def gradient_curves(
    ps: Sequence[float] | None = None, size: int = 4, rest_p: float = 0.7
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`loss_curve` of every loss of :data:`GRADIENT_LOSSES`; ``ps`` defaults to 99 points in [0.01, 0.99]."""
    ps = np.linspace(0.01, 0.99, 99) if ps is None else ps
    return {label: loss_curve(name, ps, size, rest_p, **kw) for label, (name, kw) in GRADIENT_LOSSES.items()}


def _figure(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs):
    """A matplotlib figure and its axes, without pyplot: no backend is chosen or changed (safe in notebooks)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_gradients(
    curves: dict[str, dict[str, np.ndarray]], out: str | Path, size: int = 4, rest_p: float = 0.7
) -> list[Path]:
    """Write ``gradients.png``, ``caml_vs_ml.png`` and ``gradients.csv`` into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batch = f"binary, N={size * size} pixels; other pixels' true-class probability {rest_p:g}"

    fig, (ax_v, ax_g) = _figure(1, 2, (11, 4.2))
    for label, c in curves.items():
        ax_v.plot(c["p"], c["value"], label=label, color=LOSS_COLOURS.get(label))
        ax_g.plot(c["p"], np.abs(c["grad"]), label=label, color=LOSS_COLOURS.get(label))
    ax_v.set(xlabel="p (true-class probability of the swept pixel)", ylabel="loss", title="Loss value")
    ax_g.set(
        xlabel="p (true-class probability of the swept pixel)",
        ylabel="|∂L/∂p|",
        title="Gradient magnitude",
        yscale="log",
    )
    for ax in (ax_v, ax_g):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Loss and gradient vs p ({batch})", fontsize=10)
    fig.tight_layout()
    paths = [out / "gradients.png"]
    fig.savefig(paths[0], dpi=120)

    fig, axes = _figure(1, 3, (14, 4.2))
    for label in ("ML", "CAML"):
        c = curves[label]
        axes[0].plot(c["p"], c["value"], label=label, color=LOSS_COLOURS[label])
        axes[1].plot(c["p"], np.abs(c["grad"]), label=label, color=LOSS_COLOURS[label])
    caml = curves["CAML"]
    axes[2].plot(caml["p"], caml["alpha"], label="α = (1 − p̄)^D", color=LOSS_COLOURS["CAML"])
    axes[2].plot(caml["p"], caml["p_bar"], label="p̄", color="grey", linestyle="--")
    axes[2].plot(caml["p"], caml["dice_coef"], label="D", color="black", linestyle=":")
    axes[0].set(ylabel="loss", title="Loss value")
    axes[1].set(ylabel="|∂L/∂p|", title="Gradient magnitude", yscale="log")
    axes[2].set(ylabel="value", title="CAML's exponent and its inputs")
    for ax in axes:
        ax.set_xlabel("p (true-class probability of the swept pixel)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"CAML vs ML ({batch})", fontsize=10)
    fig.tight_layout()
    paths.append(out / "caml_vs_ml.png")
    fig.savefig(paths[1], dpi=120)

    paths.append(out / "gradients.csv")
    with paths[2].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["loss", "p", "value", "grad", "alpha", "p_bar", "dice_coef"])
        for label, c in curves.items():
            for i in range(len(c["p"])):
                writer.writerow(
                    [label, *(f"{c[k][i]:.10g}" for k in ("p", "value", "grad", "alpha", "p_bar", "dice_coef"))]
                )
    return paths


# --- overlays (Fig. 3/4) --------------------------------------------------------------------------------------


def _load_weights(model: torch.nn.Module, ckpt: str | Path) -> tuple[torch.nn.Module, str]:
    """A copy of ``model`` with the checkpoint's weights, and the loss label of the run it belongs to."""
    import copy

    inspect_checkpoint(ckpt)  # a readable error for a missing or corrupt file
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    model = copy.deepcopy(model)
    model.load_state_dict(state, strict=False)
    identity = RunFolder(Path(ckpt).parent.parent).identity()  # <run folder>/checkpoints/<name>.ckpt
    label = identity.keys.loss if identity is not None else Path(ckpt).stem
    return model.eval(), str(label)


def _image_miou(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None) -> float:
    valid = np.ones_like(target, dtype=bool) if ignore_index is None else target != ignore_index
    ious = []
    for c in range(num_classes):
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum()
        if union:
            ious.append((p & t).sum() / union)
    return float(np.mean(ious)) if ious else float("nan")


def overlay_figure(
    config_args: Sequence[str],
    ckpt_a: str | Path,
    ckpt_b: str | Path,
    out: str | Path,
    num_images: int = 4,
    split: str = "test",
) -> Path:
    """Write ``overlays.png``: image | ground truth | prediction A | prediction B for ``num_images`` images.

    ``config_args`` are CLI arguments (``--config base.yaml --config data/…yaml``, overrides) naming the data
    and the model architecture; the weights come from the two checkpoints.
    """
    from .callbacks.overlays import PALETTE, colourise, image_to_rgb
    from .cli import build_cli

    cli = build_cli([*config_args, "--trainer.logger=false"], run=False)
    dm, module = cli.datamodule, cli.model
    dm.setup(split if split != "val" else "validate")
    loader = {"test": dm.test_dataloader, "val": dm.val_dataloader, "train": dm.train_dataloader}[split]()
    images, masks = [], []
    for batch in loader:
        images.append(batch["image"])
        masks.append(batch["mask"])
        if sum(len(x) for x in images) >= num_images:
            break
    images, masks = torch.cat(images)[:num_images], torch.cat(masks)[:num_images]
    (model_a, label_a), (model_b, label_b) = _load_weights(module, ckpt_a), _load_weights(module, ckpt_b)
    with torch.no_grad():
        pred_a, pred_b = model_a(images).argmax(1).numpy(), model_b(images).argmax(1).numpy()
    num_classes = module.hparams.num_classes
    ignore_index = module.hparams.ignore_index

    n = len(images)
    fig, axes = _figure(n, 4, (10, 2.6 * n + 0.6), squeeze=False)
    for i in range(n):
        target = masks[i].numpy()
        panels = [
            (image_to_rgb(images[i].numpy()), "image"),
            (colourise(target, ignore_index), "ground truth"),
            (
                colourise(pred_a[i], None),
                f"{label_a} (mIoU {_image_miou(pred_a[i], target, num_classes, ignore_index):.3f})",
            ),
            (
                colourise(pred_b[i], None),
                f"{label_b} (mIoU {_image_miou(pred_b[i], target, num_classes, ignore_index):.3f})",
            ),
        ]
        for ax, (panel, title) in zip(axes[i], panels, strict=True):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    from matplotlib.patches import Patch

    handles = [Patch(color=PALETTE[c % len(PALETTE)] / 255, label=name) for c, name in enumerate(module.class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "overlays.png"
    fig.savefig(path, dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m lightning_seg.figures", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gradients", help="loss and |∂L/∂p| vs p (Fig. 1), CAML vs ML (Fig. 2/5)")
    g.add_argument("--out", required=True)
    g.add_argument("--size", type=int, default=4, help="the batch is one size×size binary image (default 4)")
    g.add_argument("--rest-p", type=float, default=0.7, help="true-class probability of the other pixels")
    o = sub.add_parser("overlays", help="predictions of two checkpoints side by side (Fig. 3/4)")
    o.add_argument("--config", action="append", required=True, help="config file(s), as for lightning-seg")
    o.add_argument("--ckpt-a", required=True)
    o.add_argument("--ckpt-b", required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--num-images", type=int, default=4)
    o.add_argument("--split", choices=("train", "val", "test"), default="test")
    args, extra = parser.parse_known_args(argv)
    if args.command == "gradients":
        if extra:
            parser.error(f"unrecognised arguments: {' '.join(extra)}")
        paths = plot_gradients(gradient_curves(size=args.size, rest_p=args.rest_p), args.out, args.size, args.rest_p)
    else:
        config_args = [a for c in args.config for a in ("--config", c)] + list(extra)  # extra: CLI overrides
        paths = [overlay_figure(config_args, args.ckpt_a, args.ckpt_b, args.out, args.num_images, args.split)]
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
