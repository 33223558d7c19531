import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

# W&B must never reach the network in tests, whatever the environment holds.
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
os.environ["WANDB_MODE"] = "offline"


@pytest.fixture(autouse=True)
def _no_wandb_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
#: CLI overrides that shrink a run on the synthetic data to seconds on a CPU: 6 steps in 2 epochs of 3 batches,
#: a validation after each epoch (every 3 steps).
SMALL_RUN = [
    "--trainer.max_steps=6",
    "--trainer.val_check_interval=3",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_model_summary=false",
    "--data.init_args.num_images=20",
    "--data.init_args.image_size=32",
]


def compose(*names: str) -> list[str]:
    """``--config`` arguments for config files under configs/, in order."""
    return [arg for name in names for arg in ("--config", str(CONFIGS / name))]


#: The real datasets: $LIGHTNING_SEG_DATA, else the shared copies beside the checkout (where CI has them).
DATA_DIR = Path(os.environ.get("LIGHTNING_SEG_DATA") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def require_data() -> Path:
    """The data directory. Without it the test is skipped, or fails where LIGHTNING_SEG_REQUIRE_DATA is set (CI)."""
    if not DATA_DIR.is_dir():
        message = f"dataset copies not found at {DATA_DIR} (set LIGHTNING_SEG_DATA)"
        if os.environ.get("LIGHTNING_SEG_REQUIRE_DATA"):
            pytest.fail(message)
        pytest.skip(message)
    return DATA_DIR


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny tensors: one intra-op thread is several times faster on a loaded 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _finish_wandb_run():
    """Finish any W&B run a test left open: Lightning's WandbLogger reuses an active run (as W&B sweeps
    need), so without this a later test's logger would write into an earlier test's run."""
    yield
    import wandb

    if wandb.run is not None:
        wandb.run.finish()


class FixedLogits(torch.nn.Module):
    """A model whose prediction is given in its input: logits ``scale``·one-hot of the class map stored in the
    input's second channel (channel 0 is ignored), plus a parameter so that an optimizer has one."""

    def __init__(self, num_classes: int, scale: float) -> None:
        super().__init__()
        self.num_classes, self.scale = num_classes, scale
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        onehot = torch.nn.functional.one_hot(x[:, 1].long(), self.num_classes).permute(0, 3, 1, 2)
        return onehot.float() * self.scale + self.dummy


#: environment variable naming the optimizer step after which :class:`SigtermAfterStep` stops its own process
SIGTERM_AFTER_STEP = "LIGHTNING_SEG_TEST_SIGTERM_AFTER_STEP"


class SigtermAfterStep(L.Callback):
    """Sends its own process a SIGTERM after the training step ``$LIGHTNING_SEG_TEST_SIGTERM_AFTER_STEP`` (nothing
    when unset): a stop at a chosen place, with the same configuration as a run that is not stopped."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if os.environ.get(SIGTERM_AFTER_STEP) == str(trainer.global_step):
            os.kill(os.getpid(), signal.SIGTERM)
