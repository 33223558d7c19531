"""Experiment loggers: W&B that falls back to offline mode when no API key is configured.

The CLI (:class:`lightning_seg.cli.SegmentationCLI`) gives every W&B run, from the run's keys
(:class:`lightning_seg.run.RunKeys`, the same strings as its folder and records):

- a name ``<loss>-fold<k>-seed<s>`` and a group ``<data>/<model>/frac<f>``, unless the config sets them;
- config keys ``dataset``, ``model``, ``loss``, ``fraction``, ``fold`` and ``seed``, so that a dashboard can
  group runs by dataset/model/fraction and colour them by loss, and ``fingerprint`` and ``cell``
  (:class:`lightning_seg.run.RunIdentity`), so that runs of other settings are never averaged together;
- the full resolved LightningCLI config under the key ``cli``.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities import rank_zero_only


def wandb_credentials_available() -> bool:
    """True if ``WANDB_API_KEY`` is set or ``~/.netrc`` has an entry for api.wandb.ai (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc")).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(_WandbLogger):
    """Lightning's ``WandbLogger`` with ``offline=None`` meaning "offline unless credentials are available".

    Offline runs are written under ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.
    ``save_dir=None`` is filled in by the CLI with the run folder, ``name`` and ``group`` (when ``None``)
    with :attr:`lightning_seg.run.RunKeys.name` and :attr:`~lightning_seg.run.RunKeys.group`.
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
        # W&B looks for a git repository from save_dir, and warns when that folder does not exist (yet).
        save_dir = Path(save_dir or ".").resolve()
        save_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, name=name, save_dir=str(save_dir), offline=offline, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # W&B warns that the setting has no effect
            self._wandb_init.pop("anonymous", None)
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
