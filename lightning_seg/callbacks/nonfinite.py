"""Stop a run at its first non-finite loss or gradient, saying where, with which loss parts, and why."""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

PART_NAMES = {"ce": "L_CE", "dice_loss": "L_Dice", "p_bar": "p̄", "dice_coef": "D", "alpha": "α"}


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient; the message names the step, the loss parts and the cause."""


def _tensors(batch) -> Iterator[Tensor]:
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, dict):
        for value in batch.values():
            yield from _tensors(value)
    elif isinstance(batch, list | tuple):
        for value in batch:
            yield from _tensors(value)


def _max_abs(tensors: list[Tensor]) -> float:
    """Largest magnitude over ``tensors`` (NaN if any value is NaN)."""
    tensors = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not tensors:
        return 0.0
    return float(torch.stack([t.abs().max().float() for t in tensors]).max())


class NonFiniteGuard(Callback):
    """Checks every optimizer step's loss and gradients; stops the run on ``patience`` non-finite steps in a row.

    A bad step before the last one allowed is skipped (its gradients are dropped, so the optimizer leaves the
    weights alone); the ``patience``-th in a row raises :class:`NonFiniteError`, which ends the run with a
    non-zero exit. No checkpoint is written on that path, and the best checkpoint only ever holds finite
    weights. Under a gradient scaler (``16-mixed``) only the loss is checked: the scaler skips steps with
    overflowing gradients by design.

    Cost per optimizer step: one pass over the gradients (``torch._foreach_norm`` with ``ord=inf``, a read of
    every gradient once) and one device→host synchronisation for the verdict. The diagnosis after a failure
    costs more and runs once.

    The count of bad steps in a row is part of ``last.ckpt``: a resumed run goes on counting.

    Configured in the CLI under ``nonfinite:``; ``--nonfinite.patience=0`` turns the check off.

    Args:
        patience: non-finite steps in a row that stop the run (≥ 1), or 0 for no check.
    """

    def __init__(self, patience: int = 1) -> None:
        if patience < 0:
            raise ValueError(f"patience must be ≥ 0, got {patience}")
        self.patience = patience
        self.bad_in_a_row = 0
        self._batch = None
        self._batch_idx = -1

    def state_dict(self) -> dict:
        return {"bad_in_a_row": self.bad_in_a_row}  # in last.ckpt: a resumed run goes on counting

    def load_state_dict(self, state_dict: dict) -> None:
        self.bad_in_a_row = state_dict.get("bad_in_a_row", 0)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx  # a reference, kept for the diagnosis only

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self.patience:
            return
        parts = getattr(getattr(pl_module, "loss", None), "parts", None)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = None
        if grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            norms = torch._foreach_norm(grads, math.inf)  # one read of every gradient; NaN propagates
            norms = torch.stack(norms if len({n.dtype for n in norms}) == 1 else [n.float() for n in norms])
            finite = torch.isfinite(norms).all()
        if parts is not None:
            loss_finite = torch.isfinite(parts.loss)
            finite = loss_finite if finite is None else finite & loss_finite.to(finite.device)
        if finite is None or bool(finite):  # the one device→host synchronisation
            self.bad_in_a_row = 0
            return
        self.bad_in_a_row += 1
        message = self.describe(trainer, pl_module, optimizer, parts, grads)
        if self.bad_in_a_row >= self.patience:
            raise NonFiniteError(message)
        optimizer.zero_grad(set_to_none=True)  # the optimizer skips parameters without a gradient
        rank_zero_warn(
            f"{message.splitlines()[0]}; update skipped ({self.bad_in_a_row} of --nonfinite.patience={self.patience})"
        )

    def describe(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer, parts, grads: list[Tensor]) -> str:
        """Where it happened, the loss parts and the likely cause (runs once, after a failure)."""
        loss_value = float(parts.loss) if parts is not None else math.nan
        loss_finite = parts is None or math.isfinite(loss_value)
        what = "non-finite gradients (finite loss)" if loss_finite else "non-finite loss"
        where = f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        values = ""
        if parts is not None:
            values = ": " + ", ".join(
                f"{label}={float(getattr(parts, name)):.4g}" for name, label in PART_NAMES.items()
            )
            values += f", loss={loss_value:.4g}"
        lrs = sorted({group["lr"] for group in optimizer.param_groups if "lr" in group})
        lr = f"{type(optimizer).__name__} lr={', '.join(f'{v:g}' for v in lrs)}"
        weights = _max_abs(list(pl_module.parameters()))
        inputs = _max_abs(list(_tensors(self._batch)))
        if not math.isfinite(inputs):
            cause = "the input batch holds NaN or Inf: check the dataset's files and preprocessing"
        elif not math.isfinite(weights):
            cause = f"the weights are no longer finite after an earlier update: the learning rate ({lr}) is too high"
        elif not loss_finite and weights > 1e4:
            cause = (
                f"the weights grew to |w| = {weights:.3g} and the outputs overflow: the learning rate ({lr}) is "
                "too high; lower it, or clip gradients with --trainer.gradient_clip_val"
            )
        elif not loss_finite:
            cause = f"the outputs overflow (largest |w| = {weights:.3g}, {lr}); lower the learning rate or use float32"
        else:
            cause = (
                f"the loss is finite but its gradient is not (largest |w| = {weights:.3g}, {lr}): a numerical "
                "problem in the loss's backward pass; report it with these values"
            )
        return f"{where}{values}\nlikely cause: {cause}"
