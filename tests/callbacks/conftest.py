"""A run of a few seconds for callback tests: the tiny network on 16 px synthetic images, plain Lightning."""

from __future__ import annotations

import lightning as L
import pytest

from lightning_seg import SegmentationModule
from lightning_seg.data import SyntheticDataModule


def tiny_module(**kwargs) -> SegmentationModule:
    data = SyntheticDataModule
    return SegmentationModule(
        model="tiny",
        num_classes=len(data.class_names),
        in_channels=data.in_channels,
        class_names=data.class_names,
        **kwargs,
    )


def tiny_data(**kwargs) -> SyntheticDataModule:
    return SyntheticDataModule(num_images=10, image_size=16, batch_size=2, **kwargs)


def tiny_trainer(root, callbacks, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks,
        accelerator="cpu",
    )
    return L.Trainer(**{**options, **kwargs})


@pytest.fixture(autouse=True)
def _seeded(single_thread):
    L.seed_everything(0, verbose=False)
