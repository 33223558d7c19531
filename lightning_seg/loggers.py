"""Experiment loggers: W&B that falls back to offline mode when no API key is configured.

The CLI (:class:`lightning_seg.cli.SegmentationCLI`) gives every W&B run

- a name from the loss and a group ``<data>/<model>/frac<f>`` derived from the run directory, unless the
  config sets them (see :func:`run_metadata`);
- config keys ``dataset``, ``model``, ``loss``, ``fraction``, ``fold`` and ``seed``, so that a dashboard can
  group runs by dataset/model/fraction and colour them by loss;
- the full resolved LightningCLI config under the key ``cli``.
"""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities import rank_zero_only

_RUN_LEAF = re.compile(r"fold(?P<fold>\d+)_frac(?P<fraction>[^_]+)_seed(?P<seed>-?\d+)$")


def wandb_credentials_available() -> bool:
    """True if ``WANDB_API_KEY`` is set or ``~/.netrc`` has an entry for api.wandb.ai (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc")).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def run_metadata(run_dir: str | Path) -> dict[str, Any]:
    """``dataset, model, loss, fraction, fold, seed`` of a ``…/<data>/<model>/<loss>/fold<k>_frac<f>_seed<s>`` path.

    Raises ``ValueError`` for a path of another shape.
    """
    parts = Path(run_dir).parts
    match = _RUN_LEAF.match(parts[-1]) if parts else None
    if match is None or len(parts) < 4:
        raise ValueError(f"{run_dir} is not a run directory <data>/<model>/<loss>/fold<k>_frac<f>_seed<s>")
    return {
        "dataset": parts[-4],
        "model": parts[-3],
        "loss": parts[-2],
        "fraction": float(match["fraction"]),
        "fold": int(match["fold"]),
        "seed": int(match["seed"]),
    }


def run_name(meta: dict[str, Any]) -> str:
    """W&B run name: the loss, then fold and seed (``caml-fold0-seed0``)."""
    return f"{meta['loss']}-fold{meta['fold']}-seed{meta['seed']}"


def run_group(meta: dict[str, Any]) -> str:
    """W&B run group: ``<data>/<model>/frac<f>``, the runs a comparison dashboard puts in one panel."""
    return f"{meta['dataset']}/{meta['model']}/frac{meta['fraction']:g}"


class WandbLogger(_WandbLogger):
    """Lightning's ``WandbLogger`` with ``offline=None`` meaning "offline unless credentials are available".

    Offline runs are written under ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.
    ``save_dir=None`` is filled in by the CLI with the run directory, ``name`` and ``group`` (when ``None``)
    with names derived from it.
    """

    def __init__(
        self,
        project: str = "lightning-seg",
        name: str | None = None,
        save_dir: str | None = None,
        offline: bool | None = None,
        group: str | None = None,
        **kwargs,
    ) -> None:
        if offline is None:
            offline = not wandb_credentials_available()
        if group is not None:
            kwargs["group"] = group
        super().__init__(project=project, name=name, save_dir=save_dir or ".", offline=offline, **kwargs)
        self._run_config: dict[str, Any] = {}

    @rank_zero_only
    def set_run_config(self, config: dict[str, Any]) -> None:
        """Write ``config`` into the run's config now and again after every ``log_hyperparams``.

        Lightning logs the module's and datamodule's hyperparameters at the start of fit; some of their
        names (``model``, ``seed``) are also run keys, and the run keys must win.
        """
        self._run_config.update(config)
        self.experiment.config.update(config, allow_val_change=True)

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        super().log_hyperparams(params)
        if self._run_config:
            self.experiment.config.update(self._run_config, allow_val_change=True)
