"""RunCheckpoint: best weights only, at most once per validation; last.ckpt on a timer; nothing non-finite as best."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from lightning_seg.callbacks import CheckpointError, RunCheckpoint
from lightning_seg.callbacks.checkpoint import inspect_checkpoint, rng_state, set_rng_state
from lightning_seg.run import Records, RunFolder
from tests.callbacks.conftest import tiny_data, tiny_module, tiny_trainer


class ValidationScores(L.Callback):
    """The monitored score after every validation (before RunCheckpoint, which Lightning runs last)."""

    def __init__(self) -> None:
        self.scores: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.scores.append((trainer.global_step, float(trainer.callback_metrics["val/miou"])))


def fit(root, checkpoint: RunCheckpoint, **trainer_kwargs) -> ValidationScores:
    scores = ValidationScores()
    trainer = tiny_trainer(root, [scores, checkpoint], **trainer_kwargs)
    trainer.fit(tiny_module(), datamodule=tiny_data())
    return scores


def improvements(scores: list[tuple[int, float]]) -> list[tuple[int, float]]:
    best, out = -math.inf, []
    for step, score in scores:
        if score > best:
            best = score
            out.append((step, score))
    return out


def test_best_holds_weights_only_written_once_per_improving_validation(tmp_path):
    checkpoint = RunCheckpoint(every_minutes=0)
    scores = fit(tmp_path, checkpoint, max_epochs=4).scores
    folder = RunFolder(tmp_path)
    assert len(scores) == 4
    best_step, best_score = improvements(scores)[-1]
    assert checkpoint.writes == {"best": len(improvements(scores)), "last": 4}
    record = folder.read(Records.BEST)
    assert record == {"path": f"checkpoints/best-step{best_step}.ckpt", "score": best_score, "step": best_step,
                      "epoch": best_step // 2 - 1, "monitor": "val/miou", "mode": "max"}  # fmt: skip
    saved = torch.load(folder.resolve(record["path"]), weights_only=True)
    assert "optimizer_states" not in saved and saved["global_step"] == best_step
    resumable = torch.load(folder.last_checkpoint, weights_only=True)
    assert resumable["optimizer_states"] and resumable["global_step"] == 8
    assert folder.previous_checkpoint.is_file()  # the one before, kept while the run is not finished
    checkpoint.finish()
    assert sorted(p.name for p in folder.checkpoints.iterdir()) == [f"best-step{best_step}.ckpt"]


def test_last_waits_for_its_interval_and_keep_last_keeps_the_final_state(tmp_path):
    waiting = RunCheckpoint(every_minutes=60)
    fit(tmp_path / "a", waiting)
    assert waiting.writes["last"] == 0 and not RunFolder(tmp_path / "a").last_checkpoint.exists()
    kept = RunCheckpoint(every_minutes=60, keep_last=True)
    fit(tmp_path / "b", kept)
    kept.finish()
    folder = RunFolder(tmp_path / "b")
    assert kept.writes["last"] == 1 and torch.load(folder.last_checkpoint, weights_only=True)["global_step"] == 6
    assert not folder.previous_checkpoint.exists()


def test_step_based_validation_selects_the_best_at_each_validation(tmp_path):
    """A step budget with validation every 3 steps across epochs (the protocol's form), not per epoch."""
    checkpoint = RunCheckpoint(every_minutes=0)
    scores = fit(
        tmp_path,
        checkpoint,
        max_epochs=-1,
        max_steps=9,
        limit_train_batches=None,
        val_check_interval=3,
        check_val_every_n_epoch=None,
    ).scores
    assert [step for step, _ in scores] == [3, 6, 9]
    best_step, best_score = improvements(scores)[-1]
    assert RunFolder(tmp_path).read(Records.BEST)["step"] == best_step
    assert checkpoint.best_model_score == best_score


def stub_trainer(score: float, step: int = 5) -> SimpleNamespace:
    return SimpleNamespace(
        state=SimpleNamespace(fn="fit"),
        sanity_checking=False,
        fast_dev_run=False,
        callback_metrics={"val/miou": torch.tensor(score)},
        global_step=step,
        current_epoch=0,
        is_global_zero=True,
    )


@pytest.mark.parametrize(("score", "weights_nan"), [(math.nan, False), (math.inf, False), (0.9, True)])
def test_a_non_finite_score_or_non_finite_weights_are_never_recorded_as_best(tmp_path, score, weights_nan):
    checkpoint = RunCheckpoint()
    checkpoint.folder = RunFolder(tmp_path)
    module = tiny_module()
    if weights_nan:
        with torch.no_grad():
            next(module.parameters())[0].fill_(math.nan)
    with pytest.warns(UserWarning, match="not finite") if weights_nan else contextlib.nullcontext():
        checkpoint.on_validation_end(stub_trainer(score), module)
    assert checkpoint.best is None and checkpoint.writes["best"] == 0 and not (tmp_path / Records.BEST).exists()


def test_a_monitor_that_is_not_logged_is_named(tmp_path):
    checkpoint = RunCheckpoint(monitor="val/iou_typo")
    checkpoint.folder = RunFolder(tmp_path)
    with pytest.raises(ValueError, match="--checkpoint.monitor=val/iou_typo is not logged at validation; logged: "):
        checkpoint.on_validation_end(stub_trainer(0.5), tiny_module())


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        RunCheckpoint(mode="maximum")
    with pytest.raises(ValueError, match="every_minutes must be ≥ 0"):
        RunCheckpoint(every_minutes=-1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint at all", "is unreadable: it is truncated or corrupt"),
        (None, "does not exist"),
        ("truncated", "is unreadable: it is truncated or corrupt"),
        ("object", "holds objects other than tensors and plain values (Unsupported global"),
        ("no weights", "holds no model weights"),
    ],
)
def test_unusable_checkpoints_are_named_with_the_reason(tmp_path, content, message):
    path = tmp_path / "x.ckpt"
    if content == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:500])
    elif content == "object":
        torch.save({"state_dict": {}, "thing": SimpleNamespace(a=1)}, path)
    elif content == "no weights":
        torch.save({"epoch": 1}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        inspect_checkpoint(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "weights_only=False" not in str(error.value)


def test_random_generators_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_fresh_start_clears_best_files_of_an_attempt_that_left_no_resumable_state(tmp_path):
    folder = RunFolder(tmp_path)
    folder.checkpoints.mkdir(parents=True)
    (folder.checkpoints / "best-step99.ckpt").write_bytes(b"old")
    (folder.checkpoints / ".last.ckpt.tmp").write_bytes(b"half")
    folder.write(Records.BEST, {"path": "checkpoints/best-step99.ckpt", "score": 1.0, "step": 99})
    checkpoint = RunCheckpoint(every_minutes=60)
    fit(tmp_path, checkpoint, max_epochs=1)
    assert sorted(p.name for p in folder.checkpoints.iterdir()) == ["best-step2.ckpt"]
    assert folder.read(Records.BEST)["step"] == 2
    assert not os.path.exists(folder.checkpoints / ".last.ckpt.tmp")


# --- a SIGTERM's state: the loggers' step count after a resume --------------------------------------------------


class StepCounts(L.LightningModule):
    """A linear model on 12 one-sample batches, 2 validation batches; records at every training step the optimizer
    step and Lightning's loggers' step count, which a run never stopped keeps equal, and the step of every
    validation that ran to its end."""

    def __init__(self, seconds_per_step: float = 0.0) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seconds_per_step = seconds_per_step
        self.counts: list[tuple[int, int]] = []
        self.validated: list[int] = []

    def training_step(self, batch, batch_idx):
        if self.seconds_per_step:
            time.sleep(self.seconds_per_step)
        self.counts.append((self.global_step, self.trainer.fit_loop.epoch_loop._batches_that_stepped))
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/x", self.layer(batch[0]).sum())

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated.append(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(2, 2)), batch_size=1)


class Sigterm(L.Callback):
    """Sends its own process a SIGTERM at ``hook`` when ``when(trainer, batch_idx)`` holds (once)."""

    def __init__(self, hook: str, when=lambda trainer, batch_idx: True) -> None:
        self.hook, self.when, self.sent = hook, when, False

    def _send(self, trainer, batch_idx=None) -> None:
        if not self.sent and not trainer.sanity_checking and self.when(trainer, batch_idx):
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.hook == "train_batch_end":
            self._send(trainer, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.hook == "validation_batch_end":
            self._send(trainer, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.hook == "validation_end":
            self._send(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.hook == "train_start":
            self._send(trainer)


def fit_counting(
    root, sigterm: Sigterm | None, seconds_per_step: float, module: StepCounts | None = None, **trainer_kwargs
) -> StepCounts:
    module = module or StepCounts(seconds_per_step)
    last = RunFolder(root).last_checkpoint
    options = dict(max_steps=12, max_epochs=-1, val_check_interval=3, check_val_every_n_epoch=None, logger=False)
    options.update(trainer_kwargs)
    callbacks = [RunCheckpoint(monitor="val/x", every_minutes=1e6), *([sigterm] if sigterm else [])]
    trainer = L.Trainer(
        default_root_dir=root,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **options,
    )
    with contextlib.suppress(SIGTERMException):
        trainer.fit(module, ckpt_path=str(last) if last.is_file() else None)
    return module


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")
@pytest.mark.parametrize(
    ("stops", "seconds_per_step", "trainer_kwargs", "same_validations"),
    [
        # after step 6, whose validation (of one batch) then runs: Lightning's restart skips it and counts the step
        # once more
        ([Sigterm("train_batch_end", lambda t, i: t.global_step == 6)], 0.0, {"limit_val_batches": 1}, True),
        # during step 6's validation (of 2 batches): held until it ends, then the same state
        ([Sigterm("validation_batch_end", lambda t, i: t.global_step == 6 and i == 0)], 0.0, {}, True),
        # after step 6, then again as the resumed run starts, before its first step
        (
            [Sigterm("train_batch_end", lambda t, i: t.global_step == 6), Sigterm("train_start")],
            0.0,
            {"limit_val_batches": 1},
            True,
        ),
        # after a step with a validation every 0.5 s: a restart sets that clock anew and skips nothing
        ([Sigterm("validation_end")], 0.2, {"val_check_interval": {"seconds": 0.5}}, False),
        # accumulating 2 batches per step, validating every 4 batches, stopped after batch 5: no validation there
        (
            [Sigterm("train_batch_end", lambda t, i: i == 4)],
            0.0,
            {"accumulate_grad_batches": 2, "max_steps": 6},
            True,
        ),
    ],
    ids=["after-a-validation-step", "during-a-validation", "twice", "time-interval", "accumulation"],
)
def test_a_sigterm_state_resumes_with_the_step_count_and_validations_of_a_run_never_stopped(
    tmp_path, stops, seconds_per_step, trainer_kwargs, same_validations
):
    reference = fit_counting(tmp_path / "reference", None, seconds_per_step, **trainer_kwargs)
    root = tmp_path / "stopped"
    counts, validated = [], []
    for sigterm in [*stops, None]:
        module = fit_counting(root, sigterm, seconds_per_step, **trainer_kwargs)
        counts += module.counts
        validated += module.validated
        assert RunFolder(root).last_checkpoint.is_file()
    assert [step for step, _ in counts] == [step for step, _ in reference.counts]
    assert [(step, logged) for step, logged in counts if step != logged] == []
    if same_validations:  # each one once, whole (not with a time interval: that depends on the clock)
        assert validated == reference.validated


class SlowValidation(StepCounts):
    """:class:`StepCounts` with 4 validation batches, each taking ``seconds`` on ``clock`` (a fake monotonic clock)."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def validation_step(self, batch, batch_idx):
        self.clock[0] += self.seconds
        return super().validation_step(batch, batch_idx)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")
@pytest.mark.parametrize(
    ("wait", "stopped_after_batches", "validated"),
    [(7.0, 4, [3, 6]), (5.0, 4, [3, 6]), (4.0, 3, [3]), (0.0, 1, [3])],
    ids=["the-validation-ends-in-time", "the-wait-ends-at-the-last-batch", "it-does-not", "no-wait"],
)
def test_a_sigterm_waits_for_the_validation_at_most_sigterm_wait_seconds(
    tmp_path, monkeypatch, wait, stopped_after_batches, validated
):
    """Validation batches of 2 s (a fake clock), a SIGTERM noticed after the first of step 6's four: with 7 s to
    wait the validation ends within them (its last batch ends 6 s after) and the held SIGTERM is given back at its
    end; with 5 s the wait runs out at the last batch, after which Lightning stops anyway; with 4 s it stops after
    the third batch (4 s after), with 0 s after the first, as Lightning alone would. Either way the run stops after
    step 6 and resumes to its end."""
    clock = [0.0]
    monkeypatch.setattr("lightning_seg.callbacks.checkpoint.time", SimpleNamespace(monotonic=lambda: clock[0]))
    seen = []
    sigterm = Sigterm("validation_batch_end", lambda t, i: t.global_step == 6 and i == 0)
    sigterm.on_validation_batch_start = lambda trainer, *args: seen.append(trainer.global_step)
    module = SlowValidation(clock, seconds=2.0)
    checkpoint = RunCheckpoint(monitor="val/x", every_minutes=1e6, sigterm_wait_seconds=wait)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=[checkpoint, sigterm],
        max_steps=12,
        val_check_interval=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(module)
    assert seen.count(6) == stopped_after_batches
    assert module.validated == validated
    assert trainer.global_step == 6 and RunFolder(tmp_path).last_checkpoint.is_file()
    resumed = fit_counting(tmp_path, None, 0.0, module=SlowValidation(clock, seconds=2.0))
    assert resumed.counts[-1][0] == 11 and resumed.validated[-1] == 12
