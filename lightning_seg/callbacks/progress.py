"""A progress bar over the whole run in optimizer steps, redrawn at the steps the loggers record, at most once a
second."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks.progress import ProgressBar as _ProgressBar
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..module import is_logging_step


class ProgressBar(_ProgressBar):
    """One Rich bar for training, in optimizer steps over the whole run, and one for testing, in batches.

    Lightning's own bars count the batches of each epoch, which says little under a step budget (a CHASE run
    on 1/4 of the data has 800 epochs of one step), and after every step they redraw and turn every
    progress-bar value into a Python number (a device→host sync per step on a GPU). This bar counts
    ``trainer.global_step`` against ``trainer.estimated_stepping_batches`` (the step budget, or epochs × batches
    in the epoch form) and is redrawn at logging steps (:func:`~lightning_seg.module.is_logging_step`) and after
    each validation, at most once every ``refresh_seconds``, and at the end of training or where an exception
    stops it, with the last values of ``keys`` read then. Where nothing is redrawn in place (output to a file or a
    pipe: Rich prints the bar once, when it stops), only the end is drawn: at a short step, the rendering of every
    logging step cost about 0.45 ms (benchmarks/README.md) for output nobody sees.

    Args:
        keys: logged values to show (those not logged yet are left out).
        refresh_seconds: least time between two redraws of a terminal's or notebook's bar.
    """

    def __init__(
        self, keys: Sequence[str] = ("train/loss", "val/loss", "val/miou"), refresh_seconds: float = 1.0
    ) -> None:
        super().__init__()
        if not refresh_seconds >= 0:
            raise ValueError(f"refresh_seconds must be ≥ 0, got {refresh_seconds}")
        self.keys = tuple(keys)
        self.refresh_seconds = refresh_seconds
        self._enabled = True
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        #: whether the console redraws the bar in place (a terminal or a notebook), and when it last did
        self._live = False
        self._drawn_at = -math.inf

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args, **kwargs) -> None:
        if self._progress is not None:
            self._progress.console.print(*args, **kwargs)
        else:
            print(*args, **kwargs)

    def _start(self, description: str, total: float, completed: int = 0) -> None:
        if not self._enabled:
            return
        console = Console()
        self._live = console.is_terminal or console.is_jupyter
        if not self._live:  # a log file: one line wide enough for the values
            console = Console(width=120)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[values]}"),
            console=console,
            auto_refresh=False,
        )
        self._progress.start()
        total = None if total == float("inf") else int(total)
        self._task = self._progress.add_task(description, total=total, completed=completed, values="")
        self._drawn_at = -math.inf

    def _show(self, trainer: L.Trainer, completed: int, final: bool = False) -> None:
        """Redraws the bar if it is due: ``final``, or on a live console ``refresh_seconds`` after the last."""
        if self._progress is None:
            return
        now = time.monotonic()
        if final or (self._live and now - self._drawn_at >= self.refresh_seconds):
            self._drawn_at = now
            self._draw(trainer, completed)

    def _draw(self, trainer: L.Trainer, completed: int) -> None:
        logged = trainer.callback_metrics
        values = "  ".join(f"{key} {float(logged[key]):.3f}" for key in self.keys if key in logged)
        self._progress.update(self._task, completed=completed, values=values)
        self._progress.refresh()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._task = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("steps", trainer.estimated_stepping_batches, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if is_logging_step(trainer):
            self._show(trainer, trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._show(trainer, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._show(trainer, trainer.global_step, final=True)
        self._stop()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test batches", sum(trainer.num_test_batches))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._progress is not None:
            self._progress.refresh()
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn == "fit":  # the steps bar as the run stopped (a crash, Ctrl-C, SIGTERM, a NaN)
            with contextlib.suppress(Exception):  # reading the values must not hide the exception on its way
                self._show(trainer, trainer.global_step, final=True)
        self._stop()
