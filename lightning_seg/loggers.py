"""Experiment loggers: W&B that falls back to offline mode when no API key is configured."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _WandbLogger


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
    ``save_dir=None`` is filled in by the CLI with the run directory.
    """

    def __init__(
        self,
        project: str = "lightning-seg",
        name: str | None = None,
        save_dir: str | None = None,
        offline: bool | None = None,
        **kwargs,
    ) -> None:
        if offline is None:
            offline = not wandb_credentials_available()
        super().__init__(project=project, name=name, save_dir=save_dir or ".", offline=offline, **kwargs)
