"""SegmentationModule: metrics against hand-computed IoU, loss wiring, hyperparameters, loss-part logging."""

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_seg import SegmentationModule
from lightning_seg.callbacks import LossPartsLogger
from lightning_seg.losses import CAML, build_loss


class FixedLogits(nn.Module):
    """Returns logits stored in the input's second channel: argmax equals a chosen prediction."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        pred = x[:, 1].long()
        return nn.functional.one_hot(pred, self.num_classes).permute(0, 3, 1, 2).float() * 10 + self.dummy


def batches(preds, masks):
    return [
        {"image": torch.stack([torch.zeros_like(p), p]).unsqueeze(0).float(), "mask": m.unsqueeze(0)}
        for p, m in zip(preds, masks, strict=True)
    ]


def hand_iou(preds, masks, num_classes, ignore_index):
    p = np.concatenate([x.numpy().ravel() for x in preds])
    t = np.concatenate([x.numpy().ravel() for x in masks])
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    out = []
    for c in range(num_classes):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        out.append(np.nan if union == 0 else inter / union)
    return np.array(out)


def test_test_metrics_match_hand_computed_iou(tmp_path):
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 3, (8, 8), generator=g) for _ in range(3)]
    masks = [torch.randint(0, 3, (8, 8), generator=g) for _ in range(3)]
    masks[0][0, :4] = 255  # ignored pixels leave the metric
    module = SegmentationModule(model="tiny", num_classes=4, in_channels=2, class_names=["a", "b", "c", "d"])
    module.model = FixedLogits(4)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, dataloaders=DataLoader(batches(preds, masks), batch_size=None))
    expected = hand_iou(preds, masks, 4, 255)
    got = np.array([trainer.callback_metrics[f"test/iou_{n}"].item() for n in "abcd"])
    np.testing.assert_allclose(got[:3], expected[:3], rtol=1e-6)
    assert np.isnan(got[3]) and np.isnan(expected[3])  # class d never occurs: NaN, left out of the mean
    assert trainer.callback_metrics["test/miou"].item() == pytest.approx(np.nanmean(expected), rel=1e-6)


def test_loss_by_name_or_instance_and_ignore_index_consistency():
    assert isinstance(SegmentationModule(model="tiny", loss="caml").loss, CAML)
    module = SegmentationModule(model="tiny", loss=build_loss("additive", lam=0.3, ignore_index=7), ignore_index=7)
    assert module.loss.lam == 0.3
    with pytest.raises(ValueError, match="ignore_index=255 but the data uses 7"):
        SegmentationModule(model="tiny", loss=build_loss("ml"), ignore_index=7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        SegmentationModule(model="tiny", num_classes=2, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        SegmentationModule(model="nope")
    with pytest.raises(ValueError, match="num_classes must be ≥ 2"):
        SegmentationModule(model="tiny", num_classes=1)


def test_hyperparameters_hold_no_modules():
    module = SegmentationModule(model="tiny", loss=build_loss("caml_fixed_r", r=2.0))
    assert module.hparams.loss_name == "caml_fixed_r"
    assert not any(isinstance(v, nn.Module) or callable(v) for v in module.hparams.values())


def test_loss_parts_logger_logs_the_step_values():
    torch.manual_seed(0)
    data = [{"image": torch.randn(2, 1, 16, 16), "mask": torch.randint(0, 3, (2, 16, 16))} for _ in range(2)]
    module = SegmentationModule(model="tiny", loss="ce", num_classes=3)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(pl_module.loss.parts)

    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LossPartsLogger(), Spy()],
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=None))
    last = seen[-1]
    for key in ("ce", "dice_loss", "p_bar", "dice_coef", "alpha"):
        assert trainer.callback_metrics[f"train/{key}"].item() == pytest.approx(getattr(last, key).item())
    # CE has no α of its own: the logged one is CAML's (1 - p̄)^D on the same logits.
    assert last.alpha.item() == pytest.approx(((1 - last.p_bar) ** last.dice_coef).item())
    assert last.loss.item() == pytest.approx(last.ce.item())


def test_optimizer_default_is_adam_1e3():
    optimizer = SegmentationModule(model="tiny").configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3
