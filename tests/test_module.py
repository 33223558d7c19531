"""SegmentationModule: metrics against hand-computed IoU, loss wiring, hyperparameters, loss-part logging."""

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex

from lightning_seg import SegmentationModule
from lightning_seg import module as module_lib
from lightning_seg.callbacks import LossPartsLogger
from lightning_seg.losses import CAML, build_loss
from lightning_seg.module import JaccardIndex
from tests.conftest import FixedLogits


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


def hand_dice(preds, masks, num_classes, ignore_index=255):
    p = np.concatenate([x.numpy().ravel() for x in preds])
    t = np.concatenate([x.numpy().ravel() for x in masks])
    p, t = p[t != ignore_index], t[t != ignore_index]
    out = []
    for c in range(num_classes):
        tp, fp, fn = np.sum((p == c) & (t == c)), np.sum((p == c) & (t != c)), np.sum((p != c) & (t == c))
        out.append(np.nan if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return np.array(out)


def test_test_metrics_match_hand_computed_iou(tmp_path):
    g = torch.Generator().manual_seed(0)
    preds = [torch.randint(0, 3, (8, 8), generator=g) for _ in range(3)]
    masks = [torch.randint(0, 3, (8, 8), generator=g) for _ in range(3)]
    masks[0][0, :4] = 255  # ignored pixels leave the metric
    module = SegmentationModule(model="tiny", num_classes=4, in_channels=2, class_names=["a", "b", "c", "d"])
    module.model = FixedLogits(4, scale=10)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, dataloaders=DataLoader(batches(preds, masks), batch_size=None))
    expected = hand_iou(preds, masks, 4, 255)
    got = np.array([trainer.callback_metrics[f"test/iou_{n}"].item() for n in "abcd"])
    np.testing.assert_allclose(got[:3], expected[:3], rtol=1e-6)
    assert np.isnan(got[3]) and np.isnan(expected[3])  # class d never occurs: NaN, left out of the mean
    assert trainer.callback_metrics["test/miou"].item() == pytest.approx(np.nanmean(expected), rel=1e-6)
    # Dice from the same counts, 2TP / (2TP + FP + FN) per class present, as torchmetrics' macro F1 has it
    assert trainer.callback_metrics["test/dice"].item() == pytest.approx(
        np.nanmean(hand_dice(preds, masks, 4)), rel=1e-6
    )
    f1 = MulticlassF1Score(4, average="macro", ignore_index=255)
    assert trainer.callback_metrics["test/dice"].item() == pytest.approx(
        f1(torch.cat([p.ravel() for p in preds]), torch.cat([m.ravel() for m in masks])).item(), rel=1e-6
    )


def test_train_metrics_cover_the_steps_since_the_previous_validation():
    g = torch.Generator().manual_seed(1)
    preds = [torch.randint(0, 3, (8, 8), generator=g) for _ in range(4)]
    masks = [torch.randint(0, 3, (8, 8), generator=g) for _ in range(4)]
    module = SegmentationModule(model="tiny", num_classes=3, in_channels=2, class_names=["a", "b", "c"])
    module.model = FixedLogits(3, scale=10)  # training shifts every logit alike: the predictions stay fixed
    seen = []

    class AtValidation(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                seen.append([trainer.callback_metrics[f"train/iou_{n}"].item() for n in "abc"])

    trainer = L.Trainer(
        max_steps=4,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[AtValidation()],
    )
    train = DataLoader(batches(preds, masks), batch_size=None)
    trainer.fit(
        module, train_dataloaders=train, val_dataloaders=DataLoader(batches(preds[:1], masks[:1]), batch_size=None)
    )
    # validations after steps 2 and 4: each sees the IoU of its own two training batches, not a running total
    np.testing.assert_allclose(seen[0], hand_iou(preds[:2], masks[:2], 3, 255), rtol=1e-6)
    np.testing.assert_allclose(seen[1], hand_iou(preds[2:], masks[2:], 3, 255), rtol=1e-6)


def test_the_train_metrics_window_is_saved_and_restored_with_the_weights():
    module = SegmentationModule(model="tiny", loss="ce", num_classes=3)
    target = torch.tensor([[[0, 1, 2, 2]]])
    module.train_metrics.update(torch.tensor([[[0, 1, 1, 2]]]), target)
    state = module.state_dict()
    assert torch.equal(state["train_metrics.iou.confmat"], torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]]))
    assert not any(key.startswith(("val_metrics", "test_metrics")) for key in state)  # reset at every use
    resumed = SegmentationModule(model="tiny", loss="ce", num_classes=3)
    resumed.load_state_dict(state)
    resumed.train_metrics.update(torch.tensor([[[0, 1, 2, 2]]]), target)
    iou = resumed.train_metrics.compute()["train/iou"]
    assert torch.allclose(iou, torch.tensor([1.0, 2 / 3, 3 / 4]))  # both batches: TP 2, 2, 3
    weights_only = {k: v for k, v in state.items() if not k.startswith("train_metrics")}
    SegmentationModule(model="tiny", loss="ce", num_classes=3).load_state_dict(weights_only)  # older checkpoints


class TwoProcesses:
    """What the checkpoint hooks read of a trainer of two processes whose other process holds the same window."""

    world_size = 2

    def __init__(self, rank: int) -> None:
        self.global_rank = rank
        self.strategy = self

    def reduce(self, tensor, reduce_op):
        assert reduce_op == "sum"
        return tensor * 2


@pytest.mark.parametrize("rank", [0, 1])
def test_under_two_processes_the_window_is_summed_on_save_and_counted_once_on_load(rank):
    module = SegmentationModule(model="tiny", loss="ce", num_classes=2)
    module.train_metrics.update(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 1, 0]]]))
    module._trainer = TwoProcesses(rank)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"]["train_metrics.iou.confmat"].tolist() == [[2, 2], [0, 2]]
    weights = [k for k in checkpoint["state_dict"] if k.startswith("model.")]
    assert weights and all(torch.equal(checkpoint["state_dict"][k], module.state_dict()[k]) for k in weights)
    module.on_load_checkpoint(checkpoint)
    expected = [[2, 2], [0, 2]] if rank == 0 else [[0, 0], [0, 0]]
    assert checkpoint["state_dict"]["train_metrics.iou.confmat"].tolist() == expected


def test_evaluation_loss_is_the_mean_over_samples():
    torch.manual_seed(0)
    images, masks = torch.randn(3, 1, 8, 8), torch.randint(0, 3, (3, 8, 8))
    data = [{"image": images[i], "mask": masks[i]} for i in range(3)]
    module = SegmentationModule(model="tiny", loss="caml", num_classes=3)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=DataLoader(data, batch_size=2))  # batches of 2 and 1
    with torch.no_grad():
        first, second = (module.loss(module(images[s]), masks[s]).item() for s in (slice(0, 2), slice(2, 3)))
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx((2 * first + second) / 3, rel=1e-6)
    assert "train/miou" not in trainer.callback_metrics  # no training steps, no training metrics


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


def test_lightnings_hook_names_are_set_past_nn_module_setattr(monkeypatch):
    """Lightning sets the hook's name on the module around every hook; those sets skip nn.Module.__setattr__'s
    checks, and every other attribute (and a hook-name attribute given anything but a name or None) still goes
    through them."""
    names = []
    module_setattr = nn.Module.__setattr__

    def counting(self, name, value):
        names.append((self, name))
        module_setattr(self, name, value)

    monkeypatch.setattr(nn.Module, "__setattr__", counting)
    trainer, _ = fit_logging_loss_parts(2, max_steps=2)
    assert trainer.global_step == 2 and trainer.lightning_module._current_fx_name is None
    assert "_current_fx_name" not in {name for _, name in names}
    # the same fit without the fast path: Lightning does set the name, many times a step, through nn.Module
    monkeypatch.setattr(module_lib, "HOOK_BOOKKEEPING", frozenset())
    names.clear()
    fit_logging_loss_parts(2, max_steps=2)
    assert sum(name == "_current_fx_name" for _, name in names) >= 2 * 20

    module, conv = SegmentationModule(model="tiny", loss="ce"), nn.Conv2d(1, 1, 1)
    names.clear()
    module.extra = conv
    module._current_fx_name = nn.Parameter(torch.zeros(1))  # not a name: nn.Module's rules, registered
    assert [name for owner, name in names if owner is module] == ["extra", "_current_fx_name"]
    assert "extra.weight" in module.state_dict() and "_current_fx_name" in dict(module.named_parameters())


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call as ``(step, {name: float})``."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    name = "recording"
    version = 0

    def log_metrics(self, metrics, step=None):
        self.records.append((step, {k: float(v) for k, v in metrics.items()}))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def fit_logging_loss_parts(batches: int, callbacks=(), **trainer_options) -> tuple[L.Trainer, RecordingLogger]:
    """A fit of the tiny network with CE on ``batches`` random batches of two 16² images, the loss parts logged into
    a :class:`RecordingLogger`."""
    torch.manual_seed(0)
    data = [{"image": torch.randn(2, 1, 16, 16), "mask": torch.randint(0, 3, (2, 16, 16))} for _ in range(batches)]
    logger = RecordingLogger()
    trainer = L.Trainer(
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LossPartsLogger(), *callbacks],
        limit_val_batches=0,
        **trainer_options,
    )
    trainer.fit(SegmentationModule(model="tiny", loss="ce", num_classes=3), DataLoader(data, batch_size=None))
    return trainer, logger


def test_loss_parts_logger_logs_the_values_of_the_logging_steps():
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(pl_module.loss.parts)

    trainer, logger = fit_logging_loss_parts(5, [Spy()], max_steps=5, log_every_n_steps=2)
    keys = ("loss", "ce", "dice_loss", "p_bar", "dice_coef", "alpha")
    logged: dict[int, dict[str, float]] = {}
    for step, metrics in logger.records:  # the parts and the module's train/loss: two calls, one step and epoch
        assert not set(logged.get(step, {})) & set(metrics) - {"epoch"}
        logged.setdefault(step, {}).update(metrics)
    # every 2nd step: steps 2 and 4 of 5, logged as (0-based) steps 1 and 3, nothing else
    assert sorted(logged) == [1, 3]
    for step, metrics in logged.items():
        parts = seen[step]
        assert metrics["epoch"] == 0
        for key in keys:
            assert metrics[f"train/{key}"] == pytest.approx(getattr(parts, key).item())
    # steps between logging steps log nothing: the trainer still holds step 4's values after step 5
    for key in keys:
        assert trainer.logged_metrics[f"train/{key}"].item() == pytest.approx(getattr(seen[3], key).item())
        assert getattr(seen[4], key).item() != pytest.approx(getattr(seen[3], key).item())
    last = seen[-1]
    # CE has no α of its own: the logged one is CAML's (1 - p̄)^D on the same logits.
    assert last.alpha.item() == pytest.approx(((1 - last.p_bar) ** last.dice_coef).item())
    assert last.loss.item() == pytest.approx(last.ce.item())


def test_loss_parts_are_logged_once_per_optimizer_step_under_gradient_accumulation():
    _, logger = fit_logging_loss_parts(8, max_steps=4, log_every_n_steps=1, accumulate_grad_batches=2)
    steps = [step for step, metrics in logger.records if "train/ce" in metrics]
    assert steps == [0, 1, 2, 3]  # one row per optimizer step, not one per micro-batch
    assert steps == [step for step, metrics in logger.records if "train/loss" in metrics]


def test_optimizer_default_is_adam_1e3():
    optimizer = SegmentationModule(model="tiny").configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3


@pytest.mark.parametrize("ignore_index", [255, None])
def test_jaccard_index_counts_as_torchmetrics(ignore_index):
    g = torch.Generator().manual_seed(2)
    reference = MulticlassJaccardIndex(5, average="none", ignore_index=ignore_index, zero_division=float("nan"))
    ours = JaccardIndex(5, average="none", ignore_index=ignore_index, zero_division=float("nan"))
    for _ in range(3):
        preds, target = torch.randint(0, 4, (2, 9, 7), generator=g), torch.randint(0, 4, (2, 9, 7), generator=g)
        if ignore_index is not None:
            target[0, :3] = ignore_index
        reference.update(preds, target)
        ours.update(preds, target)
        # the product form, used off the CPU, counts the same
        counts = module_lib._counts_by_product(target, preds, 5).long().reshape(5, 5)
        assert torch.equal(counts, module_lib.confusion_counts(preds, target, 5, ignore_index))
    assert torch.equal(ours.confmat, reference.confmat) and ours.confmat.sum() > 0
    np.testing.assert_array_equal(ours.compute().numpy(), reference.compute().numpy())  # class 4: NaN in both
