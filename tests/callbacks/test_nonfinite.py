"""NonFiniteGuard: stops at the first non-finite loss or gradient with the step, the loss parts and the cause."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
from torch import nn

from lightning_seg.callbacks import NonFiniteError, NonFiniteGuard, RunCheckpoint
from lightning_seg.run import RunFolder
from tests.callbacks.conftest import tiny_data, tiny_module, tiny_trainer


def sgd(lr: float):
    return partial(torch.optim.SGD, lr=lr)


def test_a_diverging_learning_rate_stops_at_the_first_nan_naming_parts_and_cause(tmp_path):
    checkpoint = RunCheckpoint(every_minutes=0)
    trainer = tiny_trainer(tmp_path, [NonFiniteGuard(), checkpoint])
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(tiny_module(optimizer=sgd(1e30)), datamodule=tiny_data())
    message = str(error.value)
    first, cause = message.splitlines()
    assert first.startswith("non-finite loss at step 1 (epoch 0, batch 1): L_CE=nan, L_Dice=")
    assert all(f"{part}=" in first for part in ("L_CE", "L_Dice", "p̄", "D", "α", "loss"))
    assert cause.startswith("likely cause: the weights grew to |w| = ") and "SGD lr=1e+30" in cause
    assert trainer.global_step == 1  # stopped at once, nothing trained on NaN
    # nothing was validated or saved
    assert checkpoint.writes == {"best": 0, "last": 0} and not RunFolder(tmp_path).checkpoints.exists()


class NaNImages(L.LightningDataModule):
    """The synthetic data with NaN in the images of the given training batches."""

    def __init__(self, bad_batches: set[int]) -> None:
        super().__init__()
        self.data, self.bad = tiny_data(), bad_batches

    def setup(self, stage: str) -> None:
        self.data.setup(stage)

    def train_dataloader(self):
        for index, batch in enumerate(self.data.train_dataloader()):
            if index in self.bad:
                batch["image"][0, 0, 0, 0] = math.nan
            yield batch

    def val_dataloader(self):
        return self.data.val_dataloader()


def test_bad_input_is_named_as_the_cause(tmp_path):
    trainer = tiny_trainer(tmp_path, [NonFiniteGuard()], max_epochs=1, limit_train_batches=None)
    with pytest.raises(NonFiniteError, match=r"at step 1 .*\nlikely cause: the input batch holds NaN or Inf"):
        trainer.fit(tiny_module(), datamodule=NaNImages({1}))


class WeightTrace(L.Callback):
    def __init__(self) -> None:
        self.before: list[torch.Tensor] = []
        self.after: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before.append(torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone())


def test_patience_skips_bad_steps_until_too_many_in_a_row(tmp_path):
    trace = WeightTrace()
    trainer = tiny_trainer(tmp_path, [trace, NonFiniteGuard(patience=2)], max_epochs=1, limit_train_batches=None)
    with pytest.warns(
        UserWarning, match=r"non-finite loss at step 1 .* update skipped \(1 of --nonfinite.patience=2\)"
    ):
        trainer.fit(tiny_module(), datamodule=NaNImages({1}))
    assert torch.equal(trace.before[1], trace.after[1])  # the bad step left the weights alone
    assert not torch.equal(trace.before[2], trace.after[2])  # training went on
    assert all(torch.isfinite(w).all() for w in trace.after)
    stopped = tiny_trainer(tmp_path, [NonFiniteGuard(patience=2)], max_epochs=1, limit_train_batches=None)
    with pytest.raises(NonFiniteError, match="at step 2 "), pytest.warns(UserWarning, match="update skipped"):
        stopped.fit(tiny_module(), datamodule=NaNImages({1, 2}))


def test_the_count_of_bad_steps_is_in_checkpoints_and_goes_on_after_a_resume(tmp_path):
    guard = NonFiniteGuard(patience=3)
    trainer = tiny_trainer(tmp_path, [guard], max_epochs=1, limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"update skipped \(1 of --nonfinite.patience=3\)"):
        trainer.fit(tiny_module(), datamodule=NaNImages({1}))  # the last step is bad: one in a row
    trainer.save_checkpoint(tmp_path / "state.ckpt")
    states = torch.load(tmp_path / "state.ckpt", weights_only=True)["callbacks"]
    assert states[guard.state_key] == {"bad_in_a_row": 1}
    resumed = NonFiniteGuard(patience=3)
    resumed.load_state_dict(states[guard.state_key])
    again = tiny_trainer(tmp_path, [resumed], max_epochs=1)
    with pytest.raises(NonFiniteError, match="at step 1 "), pytest.warns(UserWarning, match=r"\(2 of "):
        again.fit(tiny_module(), datamodule=NaNImages({0, 1}))  # the 2nd and 3rd in a row


def test_patience_zero_turns_the_check_off(tmp_path):
    trainer = tiny_trainer(tmp_path, [NonFiniteGuard(patience=0)], max_epochs=1)
    trainer.fit(tiny_module(optimizer=sgd(1e30)), datamodule=tiny_data())
    assert trainer.global_step == 2
    with pytest.raises(ValueError, match="patience must be ≥ 0"):
        NonFiniteGuard(patience=-1)


class SqrtAtZero(L.LightningModule):
    """A finite loss (0) whose gradient is infinite: d sqrt(x)/dx at x = 0; no ``loss.parts``."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return torch.sqrt(self.w * 0 + self.w.abs()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return [torch.zeros(1)] * 2


def test_a_finite_loss_with_non_finite_gradients_is_reported_as_such(tmp_path):
    trainer = tiny_trainer(tmp_path, [NonFiniteGuard()], max_epochs=1, limit_val_batches=0)
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite gradients \(finite loss\) at step 0 .*\nlikely cause: the loss is finite but its gradient is not",
    ):
        trainer.fit(SqrtAtZero())
