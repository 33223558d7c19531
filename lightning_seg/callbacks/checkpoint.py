"""Checkpoints that cost little and resume exactly: best weights at validation, a resumable state on a timer.

A run folder (:class:`~lightning_seg.run.RunFolder`) holds, while the run trains:

- ``checkpoints/best-step<N>.ckpt``: the weights only (no optimizer state) of the best validation so far, and
  ``best.json`` naming it (path relative to the folder), its score, step and epoch. Written after a validation
  whose monitored metric improves, is finite, and whose weights are finite: at most once per validation.
- ``checkpoints/last.ckpt``: everything needed to go on (weights, optimizer, scheduler, loop counters, the best
  so far, the random generators' states), written at the first epoch end once ``every_minutes`` have passed
  since the last one, and when a ``SIGTERM`` stops the run. The one before it is kept as ``previous.ckpt``, the
  fall-back when ``last.ckpt`` cannot be read.

When the run has finished and recorded its result, :meth:`RunCheckpoint.finish` removes ``last.ckpt`` and
``previous.ckpt`` (``keep_last`` keeps ``last.ckpt``): a finished run keeps its best weights only.

All files are written to a temporary name and renamed, so a kill never leaves half a checkpoint. A
``last.ckpt`` written at an epoch end resumes exactly: the next epoch's order and augmentations follow from the
run's seed and the epoch (:class:`~lightning_seg.data.base.MultiPassBatchSampler`), whatever the worker count,
and the global generators (which a model's dropout draws from) are restored as they were.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loops import _FitLoop, _Loop
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ..data.base import epoch_unfinished
from ..run import Records, RunFolder


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, the reason and what to do."""


def _load_error(error: BaseException) -> str:
    """The useful part of ``torch.load``'s message (which otherwise advises ``weights_only=False``)."""
    text = str(error)
    found = re.search(r"(Unsupported global: [^\n]*?)(?: was not an allowed global|\n|$)", text)
    if found:
        return f"it holds objects other than tensors and plain values ({found[1].strip()})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [
        line
        for line in lines
        if not line.lower().startswith(
            (
                "weights only load failed",
                "(1)",
                "(2)",
                "in pytorch",
                "please file",
                "check the documentation",
                "you can use",
                "re-running",
            )
        )
    ]
    reason = (lines[-1] if lines else type(error).__name__)[:160]
    return f"it is truncated or corrupt ({reason})"


def inspect_checkpoint(path: str | Path) -> dict:
    """Step, epoch and resumability of a checkpoint file, reading it as ``weights_only=True`` (memory-mapped).

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no model weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - every load failure is reported the same way
        raise CheckpointError(f"checkpoint {path} is unreadable: {_load_error(error)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} holds no model weights (no 'state_dict'): not a Lightning checkpoint")
    return {
        "step": checkpoint.get("global_step"),
        "epoch": checkpoint.get("epoch"),
        "resumable": "optimizer_states" in checkpoint and "loops" in checkpoint,
    }


def rng_state() -> dict:
    """The states of torch's, NumPy's and Python's global generators, as plain values (``weights_only``-safe)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def weights_finite(module: torch.nn.Module) -> bool:
    """All parameters and buffers finite (one device→host sync)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


class _EpochEndResumeFitLoop(_FitLoop):
    """Lightning's fit loop, but a state saved after an epoch has finished resumes at the next epoch in the step
    form (``max_steps``) too, as it does in the epoch form.

    Lightning marks the fit loop as restarting on every resume of an iteration-based run (``max_steps`` set),
    even from a finished epoch; its epoch loop then restarts in a state our epoch-end ``last.ckpt`` never holds:
    it counts one step twice in the loggers' step and draws the next epoch's data differently, so a resumed run
    departs from one that was never stopped. A state saved mid-epoch (a ``SIGTERM``) still restarts as before (its
    loader leaves out the batches already trained: :func:`~lightning_seg.data.base.resume_position`).
    """

    @_Loop.restarting.setter
    def restarting(self, restarting: bool) -> None:
        _Loop.restarting.fset(self, restarting and epoch_unfinished(self.epoch_progress.current))


def restart_skips_a_validation(trainer: L.Trainer) -> bool:
    """Whether Lightning 2.6's restart from the fit's state now skips the validation of the last step and counts
    that step once more in the loggers' step count (``_TrainingEpochLoop.advance`` and ``on_advance_end``): inside
    an epoch (the restart of a finished epoch starts the next one, :class:`_EpochEndResumeFitLoop`), outside a
    validation, every batch counter equal (Lightning's "restarted on last"), no time-based validation interval
    (whose clock a restart sets anew), no gradient accumulation window open, and a validation due at the last
    batch by Lightning's own rule, with ``should_stop`` unset as at a restart."""
    fit_loop = trainer.fit_loop
    loop = fit_loop.epoch_loop
    total = loop.batch_progress.total
    if not epoch_unfinished(fit_loop.epoch_progress.current) or trainer.validating:
        return False
    if not total.ready == total.started == total.processed == total.completed:
        return False
    if trainer._val_check_time_interval is not None or loop._should_accumulate():
        return False
    should_stop, trainer.should_stop = trainer.should_stop, False
    try:
        return loop._should_check_val_fx(fit_loop._data_fetcher)
    finally:
        trainer.should_stop = should_stop


class RunCheckpoint(Checkpoint):
    """Best weights at validation and a resumable ``last.ckpt`` on a time interval (module docstring).

    Configured in the CLI under ``checkpoint:`` (``--checkpoint.every_minutes=0`` writes ``last.ckpt`` at
    every epoch end). ``monitor`` and ``mode`` choose the best checkpoint and are part of a run's settings; the
    other arguments are not.

    Args:
        monitor: logged metric that chooses the best checkpoint.
        mode: ``"max"`` or ``"min"``.
        every_minutes: least time between two writes of ``last.ckpt`` (at epoch ends); 0 for every epoch end.
        keep_last: keep ``last.ckpt`` when the run has finished (to train on from it later).
        sigterm_wait_seconds: longest a ``SIGTERM`` that arrives during a validation waits for its end (so that
            the run resumes exactly), counted from the end of the validation batch in which it is noticed; once
            it has waited that long the run stops after the validation batch in hand (unless that is the last
            one), in a state whose resume is not exact (README, "Resume"). Leave time under the scheduler's grace
            period before its ``SIGKILL`` for the wait, up to two validation batches more and the write of
            ``last.ckpt``; 0 stops after the batch in hand, as Lightning alone does. A bounded wait also bounds
            how long a grid's run outlives its grid (:mod:`lightning_seg.grid.parent`).

    Raises:
        ValueError: ``mode`` is not ``"max"``/``"min"``, or ``every_minutes`` or ``sigterm_wait_seconds`` is
            negative.
    """

    def __init__(
        self,
        monitor: str = "val/miou",
        mode: str = "max",
        every_minutes: float = 5.0,
        keep_last: bool = False,
        sigterm_wait_seconds: float = 5.0,
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if every_minutes < 0:
            raise ValueError(f"every_minutes must be ≥ 0, got {every_minutes}")
        if sigterm_wait_seconds < 0:
            raise ValueError(f"sigterm_wait_seconds must be ≥ 0, got {sigterm_wait_seconds}")
        self.monitor = monitor
        self.mode = mode
        self.every_minutes = every_minutes
        self.keep_last = keep_last
        self.sigterm_wait_seconds = sigterm_wait_seconds
        self.folder: RunFolder | None = None
        self.best: dict | None = None  # path (relative), score, step, epoch
        #: best checkpoints that ``last.ckpt`` and ``previous.ckpt`` refer to: kept while those exist
        self._last_best: str | None = None
        self._previous_best: str | None = None
        self._restored_rng: dict | None = None
        self._last_write = time.monotonic()
        #: when a SIGTERM held back until the end of the validation it arrived in was noticed (monotonic seconds)
        self._held_since: float | None = None
        #: the next write is the SIGTERM state saved right after a validation (see on_exception)
        self._stopping_after_validation = False
        #: checkpoint files written by this process, by kind
        self.writes = {"best": 0, "last": 0}

    # --- Lightning's view -------------------------------------------------------------------------------
    @property
    def best_model_path(self) -> str:
        return str(self.folder.resolve(self.best["path"])) if self.best and self.folder else ""

    @property
    def best_model_score(self) -> float | None:
        return self.best["score"] if self.best else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.folder = RunFolder(trainer.default_root_dir)
        if type(trainer.fit_loop) is _FitLoop:  # before the checkpoint's loop state is restored
            trainer.fit_loop.__class__ = _EpochEndResumeFitLoop

    def state_dict(self) -> dict[str, Any]:
        """Written into ``last.ckpt`` only (best checkpoints hold weights alone)."""
        return {"best": self.best, "previous_best": self._last_best, "rng": rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self._last_best = self.best["path"] if self.best else None
        self._previous_best = state_dict.get("previous_best")
        self._restored_rng = state_dict.get("rng")

    # --- hooks ------------------------------------------------------------------------------------------
    def _fitting(self, trainer: L.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Bring the folder in line with the state training starts from (restored, or none when starting anew)."""
        self._held_since = None
        if self._restored_rng is not None:
            # The generators as they were when last.ckpt was written, for whatever draws from them in training
            # (dropout; the loader's order and augmentations do not), as it would have without the stop (the
            # sanity check runs between here and there with the generators isolated).
            set_rng_state(self._restored_rng)
            self._restored_rng = None
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        for leftover in self.folder.checkpoints.glob(".*.tmp"):  # from a process killed while writing
            leftover.unlink()
        if self.best is None:
            self._last_best = self._previous_best = None
        self._remove_unreferenced_best()
        if self.best is None:
            self.folder.record_path(Records.BEST).unlink(missing_ok=True)
        else:
            self._write_best_record()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_write = time.monotonic()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        """A ``SIGTERM`` during a validation waits for its end: Lightning would stop after this batch, in a state
        whose restart did not give the logs of a run never stopped (``tests/test_cli.py``). Held back, the stop
        comes after the validation, between two steps (one process: under several, the processes agree on a stop
        by Lightning's own exchange, left alone), unless it has waited ``sigterm_wait_seconds`` or more at the end
        of a batch: then Lightning stops after this batch (at the last batch, after the validation anyway)."""
        if not (self._fitting(trainer) and trainer.world_size == 1):
            return
        if trainer.received_sigterm and self._held_since is None:
            self._held_since = time.monotonic()
        if self._held_since is None:
            return
        waited = time.monotonic() - self._held_since
        trainer._signal_connector.received_sigterm = waited >= self.sigterm_wait_seconds
        if trainer.received_sigterm:  # waited long enough: Lightning stops after this batch
            self._held_since = None

    def _release_sigterm(self, trainer: L.Trainer) -> None:
        """Give Lightning back a SIGTERM held during a validation: the stop asked for stands."""
        if self._held_since is not None:
            trainer._signal_connector.received_sigterm = True
            self._held_since = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._fitting(trainer):
            return
        self._release_sigterm(trainer)  # Lightning stops at the end of this step, after the validation
        if self.monitor not in trainer.callback_metrics:
            raise ValueError(
                f"--checkpoint.monitor={self.monitor} is not logged at validation; logged: "
                f"{sorted(k for k in trainer.callback_metrics if k.startswith('val/'))}"
            )
        score = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(score) or not self._improves(score):
            return
        if not weights_finite(pl_module):
            rank_zero_warn(f"step {trainer.global_step}: the weights are not finite; not recorded as best")
            return
        step = trainer.global_step
        path = self.folder.best_checkpoint(step)
        self._write(trainer, path, weights_only=True)
        self.writes["best"] += 1
        self.best = {"path": self.folder.relative(path), "score": score, "step": step, "epoch": trainer.current_epoch}
        if trainer.is_global_zero:
            self._write_best_record()
            self._remove_unreferenced_best()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer) and time.monotonic() - self._last_write >= 60.0 * self.every_minutes:
            self.save_last(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.keep_last and self._fitting(trainer):
            self.save_last(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """A ``SIGTERM`` is a clean stop (Lightning stops between two steps): save the state to go on from."""
        self._release_sigterm(trainer)  # another exception ended the validation
        if isinstance(exception, SIGTERMException) and self._fitting(trainer):
            self._stopping_after_validation = restart_skips_a_validation(trainer)
            try:
                self.save_last(trainer)
            finally:
                self._stopping_after_validation = False
            rank_zero_info(f"stopped by SIGTERM at step {trainer.global_step}; the same command resumes from here")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """A state saved by a ``SIGTERM`` from which Lightning's restart skips a validation
        (:func:`restart_skips_a_validation`) holds the logging step count as a state saved at that validation's end
        would: the restart counts the step once more, as suits a checkpoint written by ``on_validation_end``, before
        the count grew; from our later state, the loggers' steps after a resume were one ahead of a run never
        stopped."""
        if self._stopping_after_validation:
            checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1

    # --- files ------------------------------------------------------------------------------------------
    def _improves(self, score: float) -> bool:
        if self.best is None:
            return True
        return score > self.best["score"] if self.mode == "max" else score < self.best["score"]

    def _write(self, trainer: L.Trainer, path: Path, weights_only: bool) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier()

    def save_last(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` (the old one becomes ``previous.ckpt``)."""
        folder = self.folder
        tmp = folder.last_checkpoint.with_name(f".{folder.last_checkpoint.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            if folder.last_checkpoint.exists():
                os.replace(folder.last_checkpoint, folder.previous_checkpoint)
            os.replace(tmp, folder.last_checkpoint)
        trainer.strategy.barrier()
        self.writes["last"] += 1
        self._previous_best, self._last_best = self._last_best, self.best["path"] if self.best else None
        self._last_write = time.monotonic()
        if trainer.is_global_zero:
            self._remove_unreferenced_best()

    def _write_best_record(self) -> None:
        self.folder.write(Records.BEST, {**self.best, "monitor": self.monitor, "mode": self.mode})

    def _remove_unreferenced_best(self) -> None:
        """Delete best checkpoints that neither the best so far nor a resumable checkpoint refers to."""
        keep = {self.best["path"] if self.best else None, self._last_best, self._previous_best}
        for path in self.folder.checkpoints.glob("best-step*.ckpt"):
            if self.folder.relative(path) not in keep:
                path.unlink()

    def finish(self) -> None:
        """The run has finished and recorded its result: drop the resumable state (unless ``keep_last``)."""
        if self.folder is None:
            return
        self.folder.previous_checkpoint.unlink(missing_ok=True)
        for corrupt in self.folder.checkpoints.glob("*.corrupt"):
            corrupt.unlink()
        if not self.keep_last:
            self.folder.last_checkpoint.unlink(missing_ok=True)
            self._last_best = None
        self._previous_best = None
        if self.folder.checkpoints.is_dir():
            self._remove_unreferenced_best()
