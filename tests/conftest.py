import os

import pytest

# W&B must never reach the network in tests, whatever the environment holds.
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
os.environ["WANDB_MODE"] = "offline"


@pytest.fixture(autouse=True)
def _no_wandb_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
