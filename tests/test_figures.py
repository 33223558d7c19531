"""Figures from autograd (gradients), overlays of two checkpoints, and the local comparison plots."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg import figures, plots
from lightning_seg.cli import build_cli
from tests.conftest import CONFIGS, SMALL_RUN, compose

DATA_ARGS = [*compose("base.yaml", "data/synthetic.yaml"), *SMALL_RUN[-2:]]
PS = np.linspace(0.01, 0.99, 25)


def assert_png(path: Path, min_size: int = 100) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_size
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 0, f"{path} is blank"
    return im.size


@pytest.fixture(scope="module")
def curves():
    return figures.gradient_curves(PS, size=4, rest_p=0.7)


def test_curves_are_finite(curves):
    assert set(curves) == {"CE", "Dice", "Additive (λ=0.5)", "ML", "CAML"}
    for c in curves.values():
        for key in ("value", "grad", "alpha", "p_bar"):
            assert np.isfinite(c[key]).all()
        assert (c["grad"] < 0).all(), "raising the true-class probability must lower every loss"


def test_ce_gradient_is_one_over_n_p(curves):
    n = 16  # 4×4 pixels, none ignored
    np.testing.assert_allclose(np.abs(curves["CE"]["grad"]), 1.0 / (n * PS), rtol=1e-9)
    # and the value: the mean of -log q over the batch (15 pixels at 0.7, the swept one at p)
    np.testing.assert_allclose(curves["CE"]["value"], (-15 * np.log(0.7) - np.log(PS)) / n, rtol=1e-9)


def test_ml_is_dice_times_ce_and_additive_is_their_mix(curves):
    np.testing.assert_allclose(curves["ML"]["value"], curves["Dice"]["value"] * curves["CE"]["value"], rtol=1e-12)
    np.testing.assert_allclose(
        curves["Additive (λ=0.5)"]["value"], 0.5 * curves["Dice"]["value"] + 0.5 * curves["CE"]["value"], rtol=1e-12
    )
    # product rule through autograd: ∂(Dice·CE)/∂p = Dice'·CE + Dice·CE'
    expected = curves["Dice"]["grad"] * curves["CE"]["value"] + curves["Dice"]["value"] * curves["CE"]["grad"]
    np.testing.assert_allclose(curves["ML"]["grad"], expected, rtol=1e-9)


def test_caml_value_and_alpha(curves):
    caml, ce, dice = curves["CAML"], curves["CE"], curves["Dice"]
    np.testing.assert_allclose(caml["alpha"], (1 - caml["p_bar"]) ** caml["dice_coef"], rtol=1e-12)
    np.testing.assert_allclose(caml["value"], dice["value"] * ce["value"] ** caml["alpha"], rtol=1e-12)
    np.testing.assert_allclose(caml["p_bar"], (15 * 0.7 + PS) / 16, rtol=1e-12)


def test_sweep_batch_sets_the_probability_exactly():
    p = torch.tensor(0.23, dtype=torch.float64)
    logits, target = figures.sweep_batch(p, size=4, rest_p=0.7)
    probs = logits.softmax(1)
    assert probs[0, 1, 0, 0].item() == pytest.approx(0.23, abs=1e-15)
    true_prob = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    assert torch.allclose(true_prob.flatten()[1:], torch.full((15,), 0.7, dtype=torch.float64))
    assert target[0, 0, 0] == 1 and (target == 1).sum() == 8


def test_gradients_command_writes_readable_pngs(tmp_path):
    paths = figures.main(["gradients", "--out", str(tmp_path)])
    assert [p.name for p in paths] == ["gradients.png", "caml_vs_ml.png", "gradients.csv"]
    assert_png(paths[0], 300)
    assert_png(paths[1], 300)
    with paths[2].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 99 and all(np.isfinite(float(r["grad"])) for r in rows)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Two tiny fits (CE, CAML) in the standard layout runs/<data>/<model>/<loss>/fold0_frac1_seed0."""
    root = tmp_path_factory.mktemp("runs")
    for loss in ("ce", "caml"):
        run = root / "synthetic" / "unet" / loss / "fold0_frac1_seed0"
        build_cli(
            ["fit", *DATA_ARGS, *SMALL_RUN, f"--model.init_args.loss={loss}", f"--trainer.default_root_dir={run}"]
        )
    return root


def test_overlays_command_from_two_checkpoints(runs_root, tmp_path):
    ckpt = {
        loss: runs_root / "synthetic/unet" / loss / "fold0_frac1_seed0/checkpoints/last.ckpt" for loss in ("ce", "caml")
    }
    args = ["overlays", "--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "data/synthetic.yaml")]
    args += ["--ckpt-a", str(ckpt["ce"]), "--ckpt-b", str(ckpt["caml"]), "--out", str(tmp_path), "--num-images", "3"]
    (path,) = figures.main([*args, "--data.init_args.num_images=20", "--data.init_args.image_size=32"])
    assert path == tmp_path / "overlays.png"
    width, height = assert_png(path, 200)
    assert height > width / 2  # three rows of four panels
    assert not list(tmp_path.glob("**/*.ckpt")), "making the figure must not train or save"


def test_weights_of_both_checkpoints_are_used(runs_root):
    module = build_cli([*DATA_ARGS, "--trainer.logger=false"], run=False).model
    a, label_a = figures._load_weights(module, runs_root / "synthetic/unet/ce/fold0_frac1_seed0/checkpoints/last.ckpt")
    b, label_b = figures._load_weights(
        module, runs_root / "synthetic/unet/caml/fold0_frac1_seed0/checkpoints/last.ckpt"
    )
    assert (label_a, label_b) == ("ce", "caml")
    state = torch.load(runs_root / "synthetic/unet/ce/fold0_frac1_seed0/checkpoints/last.ckpt", weights_only=False)[
        "state_dict"
    ]
    assert all(torch.equal(v, state[k]) for k, v in a.state_dict().items() if k in state)
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_compare_plots_from_fit_logs(runs_root, tmp_path):
    # A second seed of CE, written by hand, and a second fraction group.
    for rel, scale in (("synthetic/unet/ce/fold0_frac1_seed1", 0.9), ("synthetic/unet/ml/fold0_frac0.5_seed0", 1.0)):
        logs = runs_root / rel / "logs" / "version_0"
        logs.mkdir(parents=True)
        with (logs / "metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            names = [m for m, _ in plots.PANELS]
            writer.writerow(["epoch", "step", *names])
            for step in range(4):
                writer.writerow([step // 2, step, *(scale * (0.5 + 0.1 * step) for _ in names[:-1]), ""])
            for epoch in range(2):
                writer.writerow([epoch, 2 * epoch + 1, *([""] * 5), 0.3 + 0.1 * epoch])
    runs = plots.find_runs(runs_root)
    assert sorted((m["loss"], m["fraction"], m["seed"]) for m, _ in runs) == [
        ("caml", 1.0, 0),
        ("ce", 1.0, 0),
        ("ce", 1.0, 1),
        ("ml", 0.5, 0),
    ]
    series = plots.read_metrics(runs_root / "synthetic/unet/ce/fold0_frac1_seed0/logs/version_0/metrics.csv")
    assert {m for m, _ in plots.PANELS} <= set(series)
    # One row per training step: 2 epochs × 3 batches under SMALL_RUN.
    assert len(series["train/p_bar"]) == 2 * 3 and sorted(series["val/miou"]) == [0, 1]
    # A resumed run goes on in version_1: its curves join both logs.
    resumed = runs_root / "synthetic/unet/ml/fold0_frac0.5_seed0/logs"
    (resumed / "version_1").mkdir()
    (resumed / "version_1" / "metrics.csv").write_text("epoch,step,val/miou\n1,3,0.9\n2,5,0.6\n")
    (paths,) = [p for m, p in plots.find_runs(runs_root) if m["loss"] == "ml"]
    assert [p.parent.name for p in paths] == ["version_0", "version_1"]
    assert plots.read_metrics(paths)["val/miou"] == {0: 0.3, 1: 0.9, 2: 0.6}

    paths = plots.main(["compare", str(runs_root), "--out", str(tmp_path / "plots")])
    assert sorted(p.name for p in paths) == ["synthetic_unet_frac0.5.png", "synthetic_unet_frac1.png"]
    for path in paths:
        assert_png(path, 300)


def test_compare_draws_the_per_image_test_scores_of_tested_runs(runs_root, tmp_path):
    import shutil

    from lightning_seg.evaluation.records import EVALUATION, PER_IMAGE, write_per_image

    runs_root = shutil.copytree(runs_root, tmp_path / "runs")  # the fixture's runs stay untested for the others
    base = {"sample_group": "", "case": "both_present", "target_pixels": 5, "pred_pixels": 5, "iou": 0.5}
    for loss, dice in (("ce", 0.4), ("caml", 0.6)):
        run = runs_root / "synthetic/unet" / loss / "fold0_frac1_seed0"
        rows = [
            {**base, "id": f"{i:04d}", "class": c, "dice": dice + i / 100, "hd95": 3.0 + i, "nsd": dice, "cldice": dice if c == "curve" else float("nan")}
            for i in range(4)
            for c in ("background", "curve")
        ]  # fmt: skip
        write_per_image(run / PER_IMAGE, rows)
        (run / EVALUATION).write_text('{"calibration": {"ece": %s}}' % (dice / 10))
    paths = plots.compare(runs_root, tmp_path / "plots")
    figure = tmp_path / "plots" / "synthetic_unet_frac1_test.png"
    assert figure in paths and len(paths) == len({p.name for p in paths})
    assert_png(figure, 300)
    assert plots.test_figure("g", {"ce": [tmp_path]}, {"ce": "red"}, tmp_path / "none.png") is None
