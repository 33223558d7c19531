"""The CLI end to end on real configs: fit, test --ckpt_path best from a second call, run folders and records,
resume after a kill, failures that stop loudly, and errors in one line."""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_seg.callbacks import CheckpointError, NonFiniteError
from lightning_seg.cli import ConfigError, build_cli, main
from lightning_seg.data import SyntheticDataModule
from lightning_seg.evaluation import read_per_image
from lightning_seg.run import Records, RunFolder, RunFolderError, machine
from tests.conftest import CONFIGS, REPO, SIGTERM_AFTER_STEP, SMALL_RUN, compose

PAPER_LOSSES = ["ce", "dice", "additive", "ml", "caml", "caml_fixed_r"]
SYNTHETIC = compose("base.yaml", "data/synthetic.yaml")


def read_metrics(root: Path) -> list[dict[str, str]]:
    (path,) = sorted(root.glob("logs/version_*/metrics.csv"))[:1]
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("loss", PAPER_LOSSES)
def test_fit_then_test_best_for_every_paper_loss(loss, tmp_path):
    args = compose("base.yaml", "data/synthetic.yaml", f"losses/{loss}.yaml")
    root = tmp_path / "run"
    fitted = build_cli(["fit", *args, *SMALL_RUN, f"--trainer.default_root_dir={root}"])

    best = json.loads((root / Records.BEST).read_text())
    assert best["path"].startswith("checkpoints/best-step") and (root / best["path"]).is_file()
    rows = read_metrics(root)
    step_rows = [r for r in rows if r.get("train/p_bar")]
    assert step_rows, "loss parts must be logged at training steps"
    for row in step_rows:
        parts = {k: float(row[f"train/{k}"]) for k in ("ce", "dice_loss", "p_bar", "dice_coef", "alpha")}
        assert parts["ce"] > 0 and 0 < parts["p_bar"] < 1 and 0 < parts["alpha"] <= 1
        assert parts["dice_coef"] == pytest.approx(1 - parts["dice_loss"], abs=1e-6)
        if loss != "caml_fixed_r":  # fixed r: α = (1 - p̄)^r, otherwise CAML's (1 - p̄)^D is logged
            assert parts["alpha"] == pytest.approx((1 - parts["p_bar"]) ** parts["dice_coef"], rel=1e-4)
        else:
            assert parts["alpha"] == pytest.approx((1 - parts["p_bar"]) ** 3.0, rel=1e-4)
    assert any(r.get("val/miou") for r in rows)
    # a finished run keeps its best weights only
    assert [p.name for p in (root / "checkpoints").iterdir()] == [Path(best["path"]).name]

    # A separate invocation, as from a new shell, finds the best checkpoint of the fit above.
    cli = build_cli(["test", *args, *SMALL_RUN, f"--trainer.default_root_dir={root}", "--ckpt_path=best"])
    metrics = cli.trainer.callback_metrics
    names = ("background", "region", "curve", "blob")
    per_class = torch.stack([metrics[f"test/iou_{n}"] for n in names])
    assert torch.isfinite(metrics["test/miou"])
    assert metrics["test/miou"] == pytest.approx(per_class.nanmean().item())
    # ... and leaves its metrics beside the run, for grids and aggregation, under the run's own keys and labels
    record = json.loads((root / Records.TEST_METRICS).read_text())
    assert record["keys"] == fitted.identity.keys.as_dict() == cli.identity.keys.as_dict()
    assert record["fingerprint"] == fitted.identity.fingerprint
    assert record["metrics"]["test/miou"] == pytest.approx(metrics["test/miou"].item())
    assert record["ckpt_path"] == best["path"] and record["ckpt_step"] == best["step"]
    run = json.loads((root / Records.RUN).read_text())
    assert run["status"] == "trained" and run["keys"] == record["keys"] and run["steps"] == 6
    assert run["machine"] == machine("cpu")  # the processor, torch's kernels and threads that trained it


def test_a_checkpoint_path_does_not_override_the_config(tmp_path):
    """Testing a checkpoint keeps the config's loss and its arguments; --ckpt_path last names the kept last.ckpt."""
    args = [
        *compose("base.yaml", "data/synthetic.yaml", "losses/additive.yaml"),
        "--model.init_args.loss.init_args.lam=0.3",
    ]
    root = tmp_path / "run"
    build_cli(["fit", *args, *SMALL_RUN, f"--trainer.default_root_dir={root}", "--checkpoint.keep_last=true"])
    cli = build_cli(["test", *args, *SMALL_RUN, f"--trainer.default_root_dir={root}", "--ckpt_path=last"])
    assert type(cli.model.loss).__name__ == "Additive" and cli.model.loss.lam == 0.3
    assert cli.identity.keys.loss == "additive_lam=0.3"
    assert json.loads((root / Records.TEST_METRICS).read_text())["ckpt_path"] == "checkpoints/last.ckpt"


def test_the_run_folder_follows_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = compose("base.yaml", "data/synthetic.yaml", "losses/additive.yaml")
    cli = build_cli(
        [*args, "--model.init_args.loss.init_args.lam=0.3", "--data.init_args.train_fraction=0.25"], run=False
    )
    keys = cli.identity.keys
    assert keys.as_dict() == {
        "dataset": "synthetic",
        "model": "unet_base_channels=8_depth=3",
        "loss": "additive_lam=0.3",
        "fraction": 0.25,
        "fold": 0,
        "seed": 0,
    }
    expected = Path("runs/synthetic/unet_base_channels=8_depth=3/additive_lam=0.3") / (
        f"fold0_frac0.25_seed0-{cli.identity.fingerprint[:8]}"
    )
    assert Path(cli.trainer.default_root_dir) == expected == Path("runs") / cli.identity.relpath


def test_data_attributes_are_linked_into_the_model(tmp_path):
    cli = build_cli([*SYNTHETIC, f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model.hparams.num_classes == 4
    assert list(cli.model.class_names) == ["background", "region", "curve", "blob"]
    assert cli.model.hparams.in_channels == 1
    assert cli.model.loss.ignore_index == cli.datamodule.ignore_index == 255
    assert tuple(cli.model.hparams.curvilinear_classes) == ("curve",)


def test_every_test_writes_per_image_records_with_the_configured_evaluation(tmp_path):
    root = tmp_path / "run"
    options = ["--model.init_args.evaluation.nsd_tolerance=1", "--model.init_args.evaluation.both_empty=perfect"]
    args = [*compose("base.yaml", "data/synthetic.yaml", "losses/ce.yaml"), *SMALL_RUN, *options]
    build_cli(["fit", *args, f"--trainer.default_root_dir={root}", "--test_after_fit=true"])
    test_ids = SyntheticDataModule(num_images=20, image_size=32).split_ids()["test"]
    rows = read_per_image(root / Records.PER_IMAGE)
    assert [(r["id"], r["class"]) for r in rows] == [(i, c) for i in test_ids for c in SyntheticDataModule.class_names]
    for row in rows:  # both_empty=perfect: a number everywhere but clDice of the classes that are not curvilinear
        assert not any(math.isnan(row[s]) for s in ("dice", "iou", "hd95", "nsd"))
        assert math.isnan(row["cldice"]) == (row["class"] != "curve")
    record = json.loads((root / Records.EVALUATION).read_text())
    assert record["settings"]["nsd_tolerance"] == 1.0 and record["settings"]["both_empty"] == "perfect"
    assert record["ckpt_path"] == json.loads((root / Records.BEST).read_text())["path"]
    assert (root / Records.RELIABILITY).is_file()
    metrics = json.loads((root / Records.TEST_METRICS).read_text())["metrics"]
    assert 0 <= metrics["test/ece"] <= 1 and "test/cldice_curve" in metrics and "test/miou" in metrics


def test_test_best_without_a_fit_explains(tmp_path):
    with pytest.raises(RunFolderError, match="run `lightning-seg fit` with the same config first"):
        build_cli(["test", *SYNTHETIC, *SMALL_RUN, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=best"])


def test_demo_config_fits_and_tests(tmp_path):
    root = tmp_path / "demo"
    cli = build_cli(["fit", "--config", str(CONFIGS / "demo.yaml"), *SMALL_RUN, f"--trainer.default_root_dir={root}"])
    assert "test/miou" in cli.trainer.callback_metrics
    assert "test/iou_curve" in cli.trainer.callback_metrics


def test_wandb_logger_runs_offline_without_key(tmp_path):
    root = tmp_path / "wb"
    args = compose("base.yaml", "data/synthetic.yaml", "loggers/wandb.yaml")
    cli = build_cli(["fit", *args, *SMALL_RUN, "--trainer.max_epochs=1", f"--trainer.default_root_dir={root}"])
    kinds = [type(logger).__name__ for logger in cli.trainer.loggers]
    assert kinds == ["CSVLogger", "WandbLogger"]
    assert cli.trainer.loggers[1]._offline
    assert list((root / "wandb").glob("offline-run-*/run-*.wandb"))


def test_bad_loss_name_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="--model.init_args.loss: unknown loss 'focal_typo'"):
        build_cli(
            [*SYNTHETIC, "--model.init_args.loss=focal_typo", f"--trainer.default_root_dir={tmp_path}"], run=False
        )


@pytest.mark.parametrize("config", sorted(p.name for p in (CONFIGS / "losses").glob("*.yaml")))
def test_every_loss_config_runs_a_training_step(config, tmp_path):
    args = compose("base.yaml", "data/synthetic.yaml", f"losses/{config}")
    cli = build_cli(
        [
            "fit",
            *args,
            "--trainer.fast_dev_run=2",
            "--data.init_args.image_size=32",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert cli.model.loss.name == config.removesuffix(".yaml")


# ------------------------------------------------------------------------------------------ run folders


def test_two_fits_that_differ_in_learning_rate_get_two_folders_and_leave_each_other_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    adam = "--model.init_args.optimizer=torch.optim.Adam"
    first = build_cli(["fit", *SYNTHETIC, *SMALL_RUN, adam, "--model.init_args.optimizer.init_args.lr=0.001"])
    first_folder = Path(first.trainer.default_root_dir)
    records = {name: (first_folder / name).read_text() for name in (Records.RUN, Records.BEST)}
    second = build_cli(["fit", *SYNTHETIC, *SMALL_RUN, adam, "--model.init_args.optimizer.init_args.lr=0.01"])
    second_folder = Path(second.trainer.default_root_dir)
    assert first_folder != second_folder and first_folder.parent == second_folder.parent
    assert {name: (first_folder / name).read_text() for name in records} == records
    # reusing the first folder for the second run's settings is refused, with what differs and what to do
    with pytest.raises(RunFolderError) as error:
        build_cli(
            [
                "fit",
                *SYNTHETIC,
                *SMALL_RUN,
                adam,
                "--model.init_args.optimizer.init_args.lr=0.01",
                f"--trainer.default_root_dir={first_folder}",
            ]  # fmt: skip
        )
    assert str(error.value) == (
        f"{first_folder} holds a run with other settings (model.init_args.optimizer.init_args.lr 0.001 → 0.01); "
        f"choose another folder with --trainer.default_root_dir=DIR, or leave it unset for {second_folder}"
    )


def test_a_finished_run_is_not_trained_again(tmp_path, capsys):
    args = ["fit", *SYNTHETIC, *SMALL_RUN, f"--trainer.default_root_dir={tmp_path}"]
    build_cli(args)
    best = (tmp_path / Records.BEST).read_text()
    capsys.readouterr()
    again = build_cli(args)
    assert "has finished training; nothing to train" in capsys.readouterr().out
    assert again.trainer.global_step == 0 and (tmp_path / Records.BEST).read_text() == best


def test_a_moved_run_folder_tests_its_best_checkpoint(tmp_path):
    before, after = tmp_path / "before", tmp_path / "elsewhere" / "after"
    build_cli(["fit", *SYNTHETIC, *SMALL_RUN, f"--trainer.default_root_dir={before}"])
    after.parent.mkdir()
    shutil.move(before, after)
    cli = build_cli(["test", *SYNTHETIC, *SMALL_RUN, f"--trainer.default_root_dir={after}", "--ckpt_path=best"])
    record = json.loads((after / Records.TEST_METRICS).read_text())
    assert record["ckpt_path"] == json.loads((after / Records.BEST).read_text())["path"]
    assert "test/miou" in cli.trainer.callback_metrics


def test_ckpt_path_last_without_a_resumable_checkpoint_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="--ckpt_path last: no resumable checkpoint in"):
        build_cli(["fit", *SYNTHETIC, *SMALL_RUN, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=last"])


# ------------------------------------------------------------------------- failures and resume (subprocess)

#: a fit of ~10 s with a resumable checkpoint at every epoch end
RESUMABLE = [*SYNTHETIC, *SMALL_RUN, "--trainer.max_steps=12", "--checkpoint.every_minutes=0", "--test_after_fit=true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


#: the command line of the CLI in a process of its own
CLI = [sys.executable, "-m", "lightning_seg.cli"]


def lightning_seg(*args: str, timeout: float = 300, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def killed_during_training(root: Path, signum: int, after_epoch: int, *extra: str) -> subprocess.Popen:
    """Start the fit (``RESUMABLE``, then ``extra``) and send ``signum`` once last.ckpt holds epoch ``after_epoch``
    (bounded in time)."""
    command = [*CLI, "fit", *RESUMABLE, *extra, f"--trainer.default_root_dir={root}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    deadline = time.monotonic() + 600
    try:
        while True:
            assert process.poll() is None, f"the fit ended before the signal:\n{process.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline, "no resumable checkpoint after 600 s"
            try:
                if torch.load(RunFolder(root).last_checkpoint, weights_only=True)["epoch"] >= after_epoch:
                    break
            except (OSError, RuntimeError, EOFError, KeyError):
                pass
            time.sleep(0.1)
        process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        process.kill()
    return process


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("uninterrupted")
    done = lightning_seg("fit", *RESUMABLE, f"--trainer.default_root_dir={root}")
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def results(root: Path) -> dict:
    best = json.loads((root / Records.BEST).read_text())
    weights = torch.load(root / best["path"], weights_only=True)["state_dict"]
    return {"best": best, "test": json.loads((root / Records.TEST_METRICS).read_text()), "weights": weights}


def assert_same_results(a: Path, b: Path) -> None:
    first, second = results(a), results(b)
    assert first["best"] == second["best"] and first["test"] == second["test"]
    assert first["weights"].keys() == second["weights"].keys()
    assert all(torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"]), "weights differ"


def test_output_is_quiet_and_ends_naming_the_folder_and_the_best_checkpoint(uninterrupted):
    root, done = uninterrupted
    output = done.stdout + done.stderr
    for noise in ("TPU available", "litlogger", "LeafSpec", "FLOPs", "Seed set to", "LightningCLI's args"):
        assert noise not in output
    best = json.loads((root / Records.BEST).read_text())
    assert (
        f"lightning-seg: {root}: trained 12 steps; best val/miou {best['score']:.4f} at step {best['step']} ({best['path']})"
        in done.stdout
    )
    assert done.stdout.rstrip().splitlines()[-1].startswith(f"lightning-seg: {root}: test/miou ")
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == [Path(best["path"]).name]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL semantics")
def test_a_fit_killed_and_run_again_resumes_to_the_same_results(uninterrupted, tmp_path):
    """With loader workers, which fetch a resumed epoch's first batches before Lightning sets the epoch, against a
    reference without: the same results (the worker count is not a setting)."""
    reference, _ = uninterrupted
    root = tmp_path / "killed"
    workers = "--data.init_args.num_workers=2"
    killed = killed_during_training(root, signal.SIGKILL, 1, workers)
    assert killed.returncode == -signal.SIGKILL
    assert not (root / Records.TEST_METRICS).exists()
    again = lightning_seg("fit", *RESUMABLE, workers, f"--trainer.default_root_dir={root}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"lightning-seg: resuming {root} from checkpoints/last.ckpt (step " in again.stdout
    assert_same_results(reference, root)
    assert json.loads((root / Records.RUN).read_text())["status"] == "trained"


#: one epoch of 12 steps, validated every 3, with a callback that can stop the run after a chosen step
ONE_EPOCH = [
    "--data.init_args.min_epoch_steps=12",
    "--trainer.limit_train_batches=1.0",
    "--trainer.callbacks+=tests.conftest.SigtermAfterStep",
]


#: a validation of two batches of 2 images: a SIGTERM sent just before it is noticed after its first batch
TWO_VALIDATION_BATCHES = ["--trainer.limit_val_batches=2", "--data.init_args.batch_size=2"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")
@pytest.mark.parametrize(
    ("stop_after", "extra"),
    [
        (5, []),  # inside the one epoch, between validations (after 3, 6, 9, 12)
        (11, []),
        (6, []),  # at a step with a validation: it runs, then the run stops
        (6, TWO_VALIDATION_BATCHES),  # noticed during the validation of two batches: held back until its end
    ],
)
def test_a_fit_stopped_mid_epoch_by_sigterm_resumes_to_the_same_results(tmp_path, stop_after, extra):
    """The resumed epoch goes on from the batch after the last one trained, not from its first batch again: the same
    best checkpoint, test metrics, weights and logged training values as a run never stopped."""
    reference = tmp_path / "reference"
    done = lightning_seg("fit", *RESUMABLE, *ONE_EPOCH, *extra, f"--trainer.default_root_dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "stopped"
    run = ["fit", *RESUMABLE, *ONE_EPOCH, *extra, f"--trainer.default_root_dir={root}"]
    stopped = lightning_seg(*run, env={**ENV, SIGTERM_AFTER_STEP: str(stop_after)})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    state = torch.load(RunFolder(root).last_checkpoint, weights_only=True)
    assert (state["epoch"], state["global_step"]) == (0, stop_after)  # inside the one epoch
    again = lightning_seg(*run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from a checkpoint that ended before the epoch ended" not in again.stderr
    assert_same_results(reference, root)
    assert training_values(root) == training_values(reference)


def training_values(root: Path) -> dict[tuple[str, str], str]:
    """``{(step, name): value}`` of every ``train/`` value in the run's logs (all log versions); each logged once."""
    values: dict[tuple[str, str], str] = {}
    for path in sorted(root.glob("logs/version_*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                for name, value in row.items():
                    if name.startswith("train/") and value:
                        assert (row["step"], name) not in values, f"{name} logged twice at step {row['step']}"
                        values[row["step"], name] = value
    return values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL semantics")
def test_a_corrupt_last_checkpoint_is_reported_and_the_run_resumes_from_the_one_before(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    root = tmp_path / "corrupt"
    killed_during_training(root, signal.SIGKILL, after_epoch=2)
    folder = RunFolder(root)
    assert folder.previous_checkpoint.is_file()
    folder.last_checkpoint.write_bytes(folder.last_checkpoint.read_bytes()[:1000])  # truncated
    again = lightning_seg("fit", *RESUMABLE, f"--trainer.default_root_dir={root}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"checkpoint {folder.last_checkpoint} is unreadable: it is truncated or corrupt" in again.stdout
    assert "set aside as checkpoints/last.ckpt.corrupt" in again.stdout
    assert f"resuming {root} from checkpoints/previous.ckpt" in again.stdout
    assert_same_results(reference, root)  # previous.ckpt was written at an epoch end too: the same run
    assert not list(folder.checkpoints.glob("*.corrupt")) and not folder.previous_checkpoint.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals")
def test_sigterm_stops_cleanly_with_a_resumable_state_and_no_corrupt_state_starts_again(tmp_path):
    root = tmp_path / "terminated"
    stopped = killed_during_training(root, signal.SIGTERM, after_epoch=0)
    assert stopped.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step" in stopped.stdout.read()
    folder = RunFolder(root)
    for checkpoint in (folder.last_checkpoint, folder.previous_checkpoint):
        if checkpoint.exists():
            checkpoint.write_bytes(b"garbage")
    again = lightning_seg("fit", *RESUMABLE, f"--trainer.default_root_dir={root}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"starting {root} again from scratch" in again.stdout
    assert json.loads((root / Records.RUN).read_text())["steps"] == 12


def test_a_diverging_fit_exits_non_zero_naming_the_cause_and_records_no_best(tmp_path):
    root = tmp_path / "diverged"
    sgd = ["--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=1e30"]
    done = lightning_seg("fit", *SYNTHETIC, *SMALL_RUN, *sgd, f"--trainer.default_root_dir={root}")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert errors[-2].startswith("lightning-seg: error: non-finite loss at step 1 (epoch 0, batch 1): L_CE=nan")
    assert errors[-1].startswith("likely cause: the weights grew") and "SGD lr=1e+30" in errors[-1]
    assert "Traceback" not in done.stderr
    assert not (root / Records.BEST).exists() and not list(root.glob("checkpoints/*.ckpt"))
    run = json.loads((root / Records.RUN).read_text())
    assert run["status"] == "failed" and run["reason"].startswith("non-finite loss at step 1")
    assert run["machine"]["device"] == "cpu" and run["machine"]["processor"] == machine()["processor"]


# -------------------------------------------------------------------------------------------- errors


def one_line_error(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit:
        main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return exit.value.code, lines[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--model.init_args.loss=focal_typo"],
            "--model.init_args.loss: unknown loss 'focal_typo'; registered: additive, ",
        ),
        (["--data.init_args.fold=7"], "--data.init_args.fold: fold must lie in [0, 4], got 7"),
        (
            ["--data.init_args.train_fraction=1.5"],
            "--data.init_args.train_fraction: train_fraction must lie in (0, 1], got 1.5",
        ),
        (["--trainer.max_epochs=abc"], "--trainer.max_epochs: expected int, given 'abc'"),
        (["--model.init_args.model=unett"], "--model.init_args.model: unknown model 'unett'; registered: "),
        (["--checkpoint.mode=maxx"], "--checkpoint.mode: mode must be 'max' or 'min', got 'maxx'"),
        (
            ["--checkpoint.sigterm_wait_seconds=-1"],
            "--checkpoint.sigterm_wait_seconds: sigterm_wait_seconds must be ≥ 0, got -1.0",
        ),
        (
            ["--model.init_args.loss=additive", "--model.init_args.loss.init_args.lam=3"],
            "--model.init_args.loss.init_args.lam: lam must lie in [0, 1], got 3.0",
        ),
        (
            [
                '--trainer.callbacks+={"class_path": "lightning_seg.callbacks.HostMemoryReuse", "init_args": {"trim_threshold": -5}}'
            ],
            "HostMemoryReuse: trim_threshold must lie in [0, 2147483647] bytes (default 67108864), got -5",
        ),
        (
            ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint"],
            "--trainer.callbacks: lightning.pytorch.callbacks.ModelCheckpoint is a checkpoint callback; checkpoints are configured under `checkpoint:`",
        ),
    ],
)
def test_bad_options_give_one_line_naming_the_option(capsys, tmp_path, extra, message):
    code, line = one_line_error(capsys, "fit", *SYNTHETIC, *SMALL_RUN, f"--trainer.default_root_dir={tmp_path}", *extra)
    assert code == 2 and line.startswith(f"lightning-seg: error: {message}")


def test_config_file_errors_name_the_file(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: [1\n")
    code, line = one_line_error(capsys, "fit", *SYNTHETIC, "--config", str(broken))
    assert (
        code == 2
        and line
        == f"lightning-seg: error: --config {broken}: YAML syntax error at line 3, column 1: expected ',' or ']', but got '<stream end>'"
    )
    code, line = one_line_error(capsys, "fit", *SYNTHETIC, "--config", str(tmp_path / "missing.yaml"))
    assert line == f"lightning-seg: error: --config {tmp_path / 'missing.yaml'}: no such file"


def test_a_corrupt_checkpoint_is_named_and_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 64)
    args = ["test", *SYNTHETIC, *SMALL_RUN, f"--trainer.default_root_dir={tmp_path / 'run'}", f"--ckpt_path={garbage}"]
    code, line = one_line_error(capsys, *args)
    assert code == 1 and line.startswith(
        f"lightning-seg: error: checkpoint {garbage} is unreadable: it is truncated or corrupt"
    )
    with pytest.raises(CheckpointError):
        main([*args, "--debug"])
    monkeypatch.setenv("LIGHTNING_SEG_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(args)


def test_non_finite_error_reaches_python_callers(tmp_path):
    sgd = ["--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=1e30"]
    with pytest.raises(NonFiniteError, match="non-finite loss at step 1"):
        build_cli(["fit", *SYNTHETIC, *SMALL_RUN, *sgd, f"--trainer.default_root_dir={tmp_path}"])


def test_help_shows_the_projects_own_options_first(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lightning-seg fit [--config FILE ...] [--OPTION VALUE ...]")
    first_trainer = text.index("--trainer.accelerator")
    for option in ("--model.init_args.model NAME", "--model.init_args.loss NAME", "--data.init_args.fold K",
                   "--model.init_args.optimizer.init_args.lr LR", "--checkpoint.every_minutes M"):  # fmt: skip
        assert text.index(option) < first_trainer
    assert text[: text.index("\noptions:")].count("\n") < 30  # the short form fits a screen, above everything else
