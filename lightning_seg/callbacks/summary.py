"""One line about the network instead of Lightning's model table (whose FLOPs column reads 0 without an input)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class ModelSize(ModelSummary):
    """At the start of fit: ``network UNet: 31.04 M parameters (31.04 M trainable), 124.2 MB``."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        network = getattr(pl_module, "model", pl_module)
        parameters = list(network.parameters())
        total = sum(p.numel() for p in parameters)
        trainable = sum(p.numel() for p in parameters if p.requires_grad)
        size = sum(p.numel() * p.element_size() for p in parameters) / 1e6
        rank_zero_info(
            f"network {type(network).__name__}: {total / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trainable), "
            f"{size:.1f} MB"
        )
