"""The step progress bar: counts optimizer steps over the whole budget, redraws only at logging steps and validations."""

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_seg import SegmentationModule
from lightning_seg.callbacks import ProgressBar


def test_the_bar_counts_steps_and_redraws_at_logging_steps_and_validations(capsys):
    torch.manual_seed(0)
    data = [{"image": torch.randn(1, 16, 16), "mask": torch.randint(0, 3, (16, 16))} for _ in range(4)]
    module = SegmentationModule(model="tiny", loss="ce", num_classes=3)
    bar = ProgressBar()
    redraws = []
    show = bar._show
    bar._show = lambda trainer, completed: (redraws.append(completed), show(trainer, completed))
    trainer = L.Trainer(
        max_steps=12,
        val_check_interval=6,
        check_val_every_n_epoch=None,  # an epoch is 2 steps: validations fall across epoch ends
        log_every_n_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar],
    )
    trainer.fit(module, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    # logging steps 4, 8, 12; validations after steps 6 and 12; the end of training
    assert redraws == [4, 6, 8, 12, 12, 12]
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("steps")]
    assert "12/12" in line and "train/loss" in line and "val/miou" in line
