"""The step progress bar: counts optimizer steps over the whole budget, redraws only at logging steps and validations,
at most once every ``refresh_seconds`` on a live console, and only at the end where nothing redraws in place."""

import lightning as L
import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from lightning_seg import SegmentationModule
from lightning_seg.callbacks import ProgressBar


class StopAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")


def fit_drawing(bar: ProgressBar, *callbacks: L.Callback) -> list[int]:
    """The steps at which ``bar`` drew itself in a 12-step fit: logging steps 4, 8 and 12, validations after steps
    6 and 12, an epoch of 2 steps (validations fall across epoch ends)."""
    torch.manual_seed(0)
    data = [{"image": torch.randn(1, 16, 16), "mask": torch.randint(0, 3, (16, 16))} for _ in range(4)]
    module = SegmentationModule(model="tiny", loss="ce", num_classes=3)
    draws = []
    draw = bar._draw
    bar._draw = lambda trainer, completed: (draws.append(completed), draw(trainer, completed))
    trainer = L.Trainer(
        max_steps=12,
        val_check_interval=6,
        check_val_every_n_epoch=None,
        log_every_n_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar, *callbacks],
    )
    trainer.fit(module, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    return draws


@pytest.mark.parametrize(
    ("refresh_seconds", "expected"),
    [
        (0.0, [4, 6, 8, 12, 12, 12]),  # every logging step, every validation, the end
        (1e9, [4, 12]),  # the first, then nothing until the end
    ],
)
def test_a_live_bar_redraws_at_logging_steps_and_validations_at_most_once_per_interval(
    monkeypatch, refresh_seconds, expected
):
    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    assert fit_drawing(ProgressBar(refresh_seconds=refresh_seconds)) == expected


def test_a_bar_written_to_a_file_is_drawn_once_at_the_end_with_the_values(capsys):
    assert fit_drawing(ProgressBar(refresh_seconds=0.0)) == [12]
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("steps")]
    assert "12/12" in line and "train/loss" in line and "val/miou" in line


def test_a_negative_refresh_interval_is_refused():
    with pytest.raises(ValueError, match="refresh_seconds must be ≥ 0, got -1"):
        ProgressBar(refresh_seconds=-1)


def test_a_run_that_stops_early_leaves_the_bar_at_its_last_step_with_the_values(capsys):
    """A crash, Ctrl-C, SIGTERM or non-finite loss: the log file's one line says where the run stopped."""
    with pytest.raises(RuntimeError, match="stopped at step 10"):
        fit_drawing(ProgressBar(), StopAt(10))
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("steps")]
    assert "10/12" in line and "train/loss" in line and "val/miou" in line
