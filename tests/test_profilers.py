"""The trainer's profiler when the config asks for none, and a profiler the config asks for."""

import pytest
from lightning.pytorch.profilers import SimpleProfiler

from lightning_seg.cli import build_cli
from lightning_seg.profilers import NullProfiler
from tests.conftest import SMALL_RUN, compose

SYNTHETIC = compose("base.yaml", "data/synthetic.yaml")


def test_a_profiled_action_runs_once_nested_or_not_and_its_errors_pass_through():
    profiler, ran = NullProfiler(), []
    with profiler.profile("outer"):
        with profiler.profile("inner"):
            ran.append("inner")
        ran.append("outer")
    assert ran == ["inner", "outer"]
    with pytest.raises(KeyError, match="raised inside"), profiler.profile("action"):
        raise KeyError("raised inside")
    assert profiler.summary() == ""


def test_the_cli_gives_a_null_profiler_unless_the_config_asks_for_one(tmp_path):
    default = build_cli([*SYNTHETIC, f"--trainer.default_root_dir={tmp_path / 'a'}"], run=False)
    assert isinstance(default.trainer.profiler, NullProfiler)
    assert default.config.trainer.profiler is None  # the config (and config.yaml) says what was asked for
    asked = build_cli(
        [*SYNTHETIC, f"--trainer.default_root_dir={tmp_path / 'b'}", "--trainer.profiler=simple"], run=False
    )
    assert type(asked.trainer.profiler) is SimpleProfiler


def test_a_fit_with_a_profiler_from_the_config_records_the_training_steps(tmp_path):
    cli = build_cli(
        ["fit", *SYNTHETIC, *SMALL_RUN, f"--trainer.default_root_dir={tmp_path}", "--trainer.profiler=simple"]
    )
    recorded = cli.trainer.profiler.recorded_durations
    assert len(recorded["run_training_batch"]) == cli.trainer.global_step > 0
    assert len(recorded["[Callback]LossPartsLogger.on_train_batch_end"]) == cli.trainer.global_step
