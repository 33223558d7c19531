"""RunCheckpoint: best weights only, at most once per validation; last.ckpt on a timer; nothing non-finite as best."""

from __future__ import annotations

import contextlib
import math
import os
import random
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

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
