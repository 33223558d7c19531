"""The CLI end to end on real configs: fit, test --ckpt_path best from a second process-like call, logs."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from lightning_seg.cli import TEST_METRICS, build_cli, run_dir, run_keys
from lightning_seg.data import SyntheticDataModule
from lightning_seg.evaluation import EVALUATION, PER_IMAGE, RELIABILITY, read_per_image
from lightning_seg.loggers import run_metadata
from tests.conftest import CONFIGS, SMALL_RUN, compose

PAPER_LOSSES = ["ce", "dice", "additive", "ml", "caml", "caml_fixed_r"]


def read_metrics(root: Path) -> list[dict[str, str]]:
    (path,) = sorted(root.glob("logs/version_*/metrics.csv"))[:1]
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("loss", PAPER_LOSSES)
def test_fit_then_test_best_for_every_paper_loss(loss, tmp_path):
    args = compose("base.yaml", "data/synthetic.yaml", f"losses/{loss}.yaml")
    root = tmp_path / "run"
    build_cli(["fit", *args, *SMALL_RUN, f"--trainer.default_root_dir={root}"])

    best = root / "checkpoints" / "best.json"
    assert best.is_file()
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

    # A separate invocation, as from a new shell, finds the best checkpoint of the fit above.
    cli = build_cli(["test", *args, *SMALL_RUN, f"--trainer.default_root_dir={root}", "--ckpt_path=best"])
    metrics = cli.trainer.callback_metrics
    names = ("background", "region", "curve", "blob")
    per_class = torch.stack([metrics[f"test/iou_{n}"] for n in names])
    assert torch.isfinite(metrics["test/miou"])
    assert metrics["test/miou"] == pytest.approx(per_class.nanmean().item())
    # ... and leaves its metrics beside the run, for grids and aggregation
    record = json.loads((root / TEST_METRICS).read_text())
    assert record["keys"] == run_keys(cli.config.test)
    assert record["metrics"]["test/miou"] == pytest.approx(metrics["test/miou"].item())
    assert record["ckpt_path"] == json.loads(best.read_text())["best_model_path"]


def test_a_checkpoint_path_does_not_override_the_config(tmp_path):
    """Resuming or testing from a checkpoint file keeps the config's loss and its arguments."""
    args = [
        *compose("base.yaml", "data/synthetic.yaml", "losses/additive.yaml"),
        "--model.init_args.loss.init_args.lam=0.3",
    ]
    root = tmp_path / "run"
    build_cli(["fit", *args, *SMALL_RUN, f"--trainer.default_root_dir={root}"])
    last = root / "checkpoints" / "last.ckpt"
    cli = build_cli(["test", *args, *SMALL_RUN, f"--trainer.default_root_dir={root}", f"--ckpt_path={last}"])
    assert type(cli.model.loss).__name__ == "Additive" and cli.model.loss.lam == 0.3
    assert json.loads((root / TEST_METRICS).read_text())["ckpt_path"] == str(last)


def test_run_dir_follows_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = compose("base.yaml", "data/synthetic.yaml", "losses/additive.yaml")
    cli = build_cli(
        [*args, "--model.init_args.loss.init_args.lam=0.3", "--data.init_args.train_fraction=0.25"], run=False
    )
    expected = Path("runs/synthetic/unet/additive_lam=0.3/fold0_frac0.25_seed0")
    assert Path(cli.trainer.default_root_dir) == expected
    assert run_dir(cli.config) == expected
    # The folder and the keys dashboards group by agree: the keys read back from the folder are the config's.
    assert (
        run_metadata(expected)
        == run_keys(cli.config)
        == {
            "dataset": "synthetic",
            "model": "unet",
            "loss": "additive_lam=0.3",
            "fraction": 0.25,
            "fold": 0,
            "seed": 0,
        }
    )


def test_data_attributes_are_linked_into_the_model(tmp_path):
    cli = build_cli([*compose("base.yaml", "data/synthetic.yaml"), f"--trainer.default_root_dir={tmp_path}"], run=False)
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
    rows = read_per_image(root / PER_IMAGE)
    assert [(r["id"], r["class"]) for r in rows] == [(i, c) for i in test_ids for c in SyntheticDataModule.class_names]
    for row in rows:  # both_empty=perfect: a number everywhere but clDice of the classes that are not curvilinear
        assert not any(math.isnan(row[s]) for s in ("dice", "iou", "hd95", "nsd"))
        assert math.isnan(row["cldice"]) == (row["class"] != "curve")
    record = json.loads((root / EVALUATION).read_text())
    assert record["settings"]["nsd_tolerance"] == 1.0 and record["settings"]["both_empty"] == "perfect"
    assert record["ckpt_path"] == json.loads((root / "checkpoints" / "best.json").read_text())["best_model_path"]
    assert (root / RELIABILITY).is_file()
    metrics = json.loads((root / TEST_METRICS).read_text())["metrics"]
    assert 0 <= metrics["test/ece"] <= 1 and "test/cldice_curve" in metrics and "test/miou" in metrics


def test_test_best_without_a_fit_explains(tmp_path):
    args = compose("base.yaml", "data/synthetic.yaml")
    with pytest.raises(FileNotFoundError, match="run `lightning-seg fit` with the same config"):
        build_cli(["test", *args, *SMALL_RUN, f"--trainer.default_root_dir={tmp_path}", "--ckpt_path=best"])


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
    args = compose("base.yaml", "data/synthetic.yaml")
    with pytest.raises(ValueError, match="unknown loss 'focal_typo'"):
        build_cli([*args, "--model.init_args.loss=focal_typo", f"--trainer.default_root_dir={tmp_path}"], run=False)


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
