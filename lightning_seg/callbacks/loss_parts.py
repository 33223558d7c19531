"""Log the loss's parts at the training steps the loggers record, for every loss (CE included)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from ..losses import SegmentationLoss
from ..module import is_logging_step


class LossPartsLogger(Callback):
    """Logs ``train/ce``, ``train/dice_loss``, ``train/p_bar``, ``train/dice_coef`` (D) and ``train/alpha``.

    The values are the ones the loss computed from the step's own logits (kept on ``loss.parts``), so
    nothing is recomputed and no second forward pass runs. For losses without an α (CE, Dice, additive,
    ML) ``alpha`` is CAML's ``(1 - p̄)^D`` on the same batch.

    They are logged at the steps the loggers record (every ``trainer.log_every_n_steps``, see
    :func:`~lightning_seg.module.is_logging_step`), each the value of that step, at the step and with the epoch
    that ``train/loss`` gets; other steps skip the logging. They go to the loggers in one call of the trainer's
    logger connector (what Lightning itself calls for ``self.log``'s values), not through ``self.log``: five
    ``self.log`` calls made a logging step of a short step 80 % longer (benchmarks/README.md). So they are in the
    loggers and ``trainer.logged_metrics``, not in ``trainer.callback_metrics``.
    """

    def __init__(self, prefix: str = "train/") -> None:
        self.prefix = prefix

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        loss = getattr(pl_module, "loss", None)
        if not isinstance(loss, SegmentationLoss) or loss.parts is None:
            raise RuntimeError("LossPartsLogger needs pl_module.loss to be a SegmentationLoss that has been called")
        # within an accumulation window the logging step holds for every micro-batch; Lightning logs after the last
        if not is_logging_step(trainer) or trainer.fit_loop._should_accumulate():
            return
        parts = loss.parts.as_dict()
        del parts["loss"]  # already logged by the module as train/loss
        trainer._logger_connector.log_metrics({self.prefix + name: value.detach() for name, value in parts.items()})
