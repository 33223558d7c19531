"""The generic task: any registered model, any registered loss, torchmetrics per split."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassJaccardIndex

from .evaluation.test_time import (
    DEFAULT_SETTINGS,
    EvaluationSettings,
    TestEvaluation,
    check_curvilinear_classes,
    finish_test,
)
from .losses import SegmentationLoss, build_loss
from .models import build_model
from .prediction import predicted_classes

EVALUATION_SPLITS = ("val", "test")
#: the prefix of the training metrics' states in a state dict
TRAIN_METRIC_STATES = "train_metrics."
#: attributes that Lightning sets on the module before and after each hook it calls (about 40 times in a training
#: step) to a hook's name or None: never a parameter, buffer or submodule (:meth:`SegmentationModule.__setattr__`)
HOOK_BOOKKEEPING = frozenset({"_current_fx_name"})


def _counts_by_bincount(bins: Tensor, size: int) -> Tensor:
    return torch.bincount(bins, minlength=size + 1)[:size]


def _counts_by_product(target: Tensor, preds: Tensor, num_classes: int) -> Tensor:
    classes = torch.arange(num_classes, device=preds.device)
    actual = (target.reshape(-1, 1) == classes).to(torch.float64)  # an ignored pixel matches no class
    predicted = (preds.reshape(-1, 1) == classes).to(torch.float64)
    return (actual.T @ predicted).flatten()


def confusion_counts(preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None) -> Tensor:
    """C×C counts (rows: target class, columns: predicted class) of class-index maps; ``ignore_index`` pixels
    count nowhere. Nothing waits for the device: on the CPU a bincount, elsewhere (where ``torch.bincount`` reads
    its maximum back to the host) a product of one-hot indicator matrices in float64 (exact counts, no TF32).
    Inputs must be class indices (``preds`` in ``[0, C)``, ``target`` in ``[0, C)`` or ``ignore_index``)."""
    size = num_classes * num_classes
    if preds.device.type != "cpu":
        return _counts_by_product(target, preds, num_classes).round().long().reshape(num_classes, num_classes)
    bins = target * num_classes + preds
    if ignore_index is not None:
        bins = torch.where(target == ignore_index, size, bins)
    return _counts_by_bincount(bins.flatten(), size).reshape(num_classes, num_classes)


class JaccardIndex(MulticlassJaccardIndex):
    """torchmetrics' :class:`~torchmetrics.classification.MulticlassJaccardIndex` with an update that never waits
    for the device (:func:`confusion_counts`).

    torchmetrics drops ``ignore_index`` pixels by boolean indexing, a device→host sync on a GPU at every step,
    and in deterministic mode counts with a pixels × C² comparison, several times slower. ``compute`` is
    torchmetrics'.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        self.confmat += confusion_counts(preds, target, self.num_classes, self.ignore_index)


def is_logging_step(trainer: L.Trainer) -> bool:
    """Whether the loggers receive this training step's values: every ``log_every_n_steps``-th step, a step after
    which the trainer stops early, and every step of ``fast_dev_run``. The rule is Lightning's own (its
    ``LearningRateMonitor`` reads the same property)."""
    return bool(trainer.fast_dev_run) or trainer._logger_connector.should_update_logs


def adam(params) -> torch.optim.Optimizer:
    """The paper's optimizer: Adam with learning rate 1e-3."""
    return torch.optim.Adam(params, lr=1e-3)


class SegmentationModule(L.LightningModule):
    """Semantic segmentation with a model and a loss chosen by name (or ``class_path``) in config.

    Args:
        model: registry name (``unet``, ``tiny``, ``smp.Unet``, ...; see :mod:`lightning_seg.models`).
        model_kwargs: keyword arguments of the model (e.g. ``{"base_channels": 16}``).
        loss: a :class:`~lightning_seg.losses.SegmentationLoss` or a registry name (``ce``, ``dice``,
            ``additive``, ``ml``, ``caml``, ...), built with ``ignore_index``.
        num_classes, in_channels, class_names, ignore_index, curvilinear_classes: set from the DataModule by
            the CLI (``curvilinear_classes``: names of the thin, tubular classes that also get clDice).
        evaluation: options of the per-image evaluation at test time (NSD tolerance, empty-class policy,
            calibration bins); see :class:`~lightning_seg.evaluation.EvaluationSettings`.
        optimizer: optimizer factory; Adam with lr 1e-3 by default, as in the paper.
        lr_scheduler: optional scheduler factory.

    Logged per split ``s``: ``s/loss``, ``s/iou_<class>`` for every class, ``s/miou`` (their mean over
    classes present in prediction or target) and ``s/dice`` (macro pixel F1 = Dice over the same classes, from
    the same confusion matrix: ``Dice_c = 2 IoU_c / (1 + IoU_c)``). Metrics accumulate over
    many batches (dataset-level IoU), not per batch: for ``val`` and ``test`` over the whole split; for
    ``train`` over the training batches since the previous validation, logged with it. ``train/loss`` is the
    loss of the step, logged at logging steps only (every ``trainer.log_every_n_steps``, see
    :func:`is_logging_step`), so that other steps convert nothing to Python numbers (no device→host sync).

    Every test also scores each test image and class (Dice, IoU, HD95, NSD, clDice), measures calibration
    (``test/ece``, ``test/ece_<class>``) and writes the records of :mod:`lightning_seg.evaluation.records`
    into ``trainer.default_root_dir`` (docs/evaluation.md). Training and validation are unchanged.
    """

    def __init__(
        self,
        model: str = "unet",
        model_kwargs: dict | None = None,
        loss: SegmentationLoss | str = "caml",
        num_classes: int = 2,
        in_channels: int = 1,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = 255,
        curvilinear_classes: Sequence[str] = (),
        optimizer: OptimizerCallable = adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        evaluation: EvaluationSettings = DEFAULT_SETTINGS,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be ≥ 2, got {num_classes}")
        class_names = [f"class{i}" for i in range(num_classes)] if class_names is None else list(class_names)
        if len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
        check_curvilinear_classes(curvilinear_classes, class_names)
        # evaluation settings are recorded with the scores they produce (test_evaluation.json), not in hparams
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler", "evaluation"])
        self.hparams["loss_name"] = loss if isinstance(loss, str) else loss.name
        self.class_names = class_names
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.evaluation = evaluation
        self.test_evaluation: TestEvaluation | None = None
        self.configure_models()
        self.configure_losses(loss)
        self.configure_metrics()

    def __setattr__(self, name: str, value) -> None:
        # nn.Module.__setattr__ checks every value against Parameter, Module and the buffers (1.4-1.6 µs a set on
        # this project's CPU, 0.24 µs by this path): for Lightning's hook names, set about 40 times a step, 2-3 % of
        # a short step (benchmarks/README.md, turns.py). nn.Module would store a name or None where this does, in
        # __dict__, unless a parameter, buffer or submodule were registered under that name: Lightning never does.
        if name in HOOK_BOOKKEEPING and (value is None or type(value) is str):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def configure_models(self) -> None:
        hp = self.hparams
        self.model = build_model(hp.model, hp.in_channels, hp.num_classes, **(hp.model_kwargs or {}))

    def configure_losses(self, loss: SegmentationLoss | str) -> None:
        ignore_index = self.hparams.ignore_index
        if isinstance(loss, str):
            loss = build_loss(loss, ignore_index=ignore_index)
        elif loss.ignore_index != ignore_index:
            raise ValueError(
                f"the loss has ignore_index={loss.ignore_index} but the data uses {ignore_index}; "
                "set the same value in the loss's init_args"
            )
        self.loss = loss

    def configure_metrics(self) -> None:
        hp = self.hparams
        metrics = MetricCollection(
            {
                # Classes absent from prediction and target give NaN, left out of the means. One confusion
                # matrix gives IoU and Dice: a second metric (F1) would double the cost of every update. The
                # inputs are an argmax and targets that the loss has checked in the same step.
                "iou": JaccardIndex(
                    hp.num_classes, average="none", ignore_index=hp.ignore_index, zero_division=float("nan")
                ),
            }
        )
        # Attributes, not a ModuleDict: a key "train" would shadow nn.Module.train.
        self.train_metrics = metrics.clone(prefix="train/")
        # In checkpoints: a run resumed from last.ckpt logs the train/* values of the same window of batches
        # (since the previous validation) as a run never stopped (summed over processes, see
        # on_save_checkpoint). Older checkpoints without them still load.
        self.train_metrics.persistent(True)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        #: evaluation split -> (Σ loss × batch size, Σ batch size) of the batches so far, on the device
        self._loss_sums: dict[str, tuple[Tensor, int]] = {}

    def split_metrics(self, split: str) -> MetricCollection:
        return getattr(self, f"{split}_metrics")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _step(self, batch: dict, split: str) -> tuple[Tensor, Tensor]:
        """The loss and the logits of a batch; updates the split's metrics and logs the loss."""
        logits = self(batch["image"])
        target = batch["mask"]
        loss = self.loss(logits, target)
        # the one metric's own update: going through the collection adds a third to its cost, at every step
        self.split_metrics(split)["iou"].update(predicted_classes(logits), target)
        batch_size = target.shape[0]
        if split == "train":
            if is_logging_step(self.trainer):
                self.log("train/loss", loss, batch_size=batch_size)
        else:  # the split's mean loss, weighted by batch size, summed on the device and logged at the end
            total, count = self._loss_sums.get(split, (0.0, 0))
            self._loss_sums[split] = (total + loss.detach() * batch_size, count + batch_size)
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        datamodule = getattr(self.trainer, "datamodule", None)
        self.test_evaluation.update(logits, batch["mask"], batch.get("id"), getattr(datamodule, "sample_group", None))

    def _log_epoch_metrics(self, split: str) -> None:
        values = self.split_metrics(split).compute()
        iou = values.pop(f"{split}/iou")
        for name, value in zip(self.class_names, iou, strict=True):
            values[f"{split}/iou_{name}"] = value
        values[f"{split}/dice"] = (2 * iou / (1 + iou)).nanmean()  # 2TP / (2TP + FP + FN) per class
        if split in EVALUATION_SPLITS and split in self._loss_sums:
            total, count = self._loss_sums.pop(split)
            self.log(f"{split}/loss", total / count, prog_bar=split == "val")
        self.log_dict(values)
        self.log(f"{split}/miou", iou.nanmean(), prog_bar=split != "test")
        self.split_metrics(split).reset()

    def on_validation_epoch_start(self) -> None:
        self._loss_sums.pop("val", None)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        # The training batches since the previous validation, logged with it: the same window in every run of
        # a step budget, whatever the size of an epoch (none in the sanity check or a bare `validate`).
        if not self.trainer.sanity_checking and self.train_metrics["iou"].update_count:
            self._log_epoch_metrics("train")

    def on_test_epoch_start(self) -> None:
        self._loss_sums.pop("test", None)
        hp = self.hparams
        self.test_evaluation = TestEvaluation(
            self.class_names, hp.curvilinear_classes, hp.ignore_index, self.evaluation
        )

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
        finish_test(self, self.test_evaluation)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Under several processes, the checkpoint holds the training metrics' window summed over all of them
        (each process counts its own share of the batches); every process takes part in the sum."""
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TRAIN_METRIC_STATES)]:
                state[key] = trainer.strategy.reduce(state[key].clone(), reduce_op="sum")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Every process loads the summed window; process 0 alone keeps it, so that it is counted once."""
        trainer = self._trainer
        if trainer is not None and trainer.global_rank != 0:
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith(TRAIN_METRIC_STATES)]:
                state[key] = torch.zeros_like(state[key])

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
