"""A ModelCheckpoint whose best checkpoint can be found again by a later process (``test --ckpt_path best``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from ..atomic import write_json_atomic


class BestCheckpoint(ModelCheckpoint):
    """Saves into ``<trainer.default_root_dir>/checkpoints`` unless ``dirpath`` is given, and records the best.

    After every save, ``best.json`` beside the checkpoints names the best one and its score, written
    atomically. :meth:`restore_best` reads it back, so that ``lightning-seg test --config … --ckpt_path best``
    finds the checkpoint of an earlier ``fit`` with the same config.
    """

    RECORD = "best.json"

    def resolve_dirpath(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "checkpoints"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dirpath = str(self.resolve_dirpath(trainer))
        super().setup(trainer, pl_module, stage)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero and self.best_model_path:
            record = {
                "best_model_path": os.path.abspath(self.best_model_path),
                "best_model_score": None if self.best_model_score is None else float(self.best_model_score),
                "monitor": self.monitor,
                "mode": self.mode,
            }
            write_json_atomic(Path(self.dirpath) / self.RECORD, record)

    def restore_best(self, trainer: L.Trainer) -> str:
        """Set ``best_model_path`` from the record of an earlier run; raise if there is none."""
        record = self.resolve_dirpath(trainer) / self.RECORD
        if not record.is_file():
            raise FileNotFoundError(
                f"no best checkpoint recorded at {record}: run `lightning-seg fit` with the same config "
                "(same trainer.default_root_dir) first, or pass --ckpt_path PATH"
            )
        best = json.loads(record.read_text())
        if not Path(best["best_model_path"]).is_file():
            raise FileNotFoundError(f"{record} names {best['best_model_path']}, which does not exist")
        self.best_model_path = best["best_model_path"]
        return self.best_model_path
