"""Figures from autograd (gradients, the paper's gradient claims), overlays of two checkpoints, and the local
comparison plots."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seg import figures, plots
from lightning_seg.cli import build_cli
from lightning_seg.figures import Sweep
from lightning_seg.run import Records, RunFolder, find_run_folders
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
    return figures.gradient_curves(PS, Sweep(size=4, rest_p=0.7))


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
    fg_prob, logits, target = figures.sweep_batch(0.23, Sweep(size=4, rest_p=0.7))
    probs = logits.softmax(1)
    assert probs[0, 1, 0, 0].item() == pytest.approx(0.23, abs=1e-15)
    true_prob = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    assert torch.allclose(true_prob.flatten()[1:], torch.full((15,), 0.7, dtype=torch.float64))
    assert target[0, 0, 0] == 1 and (target == 1).sum() == 8
    assert fg_prob.is_leaf and fg_prob.requires_grad and torch.allclose(fg_prob, probs[:, 1], rtol=1e-15)


def test_batch_sweep_moves_every_pixel_and_sets_the_class_balance():
    _, logits, target = figures.sweep_batch(0.9, Sweep(size=4, swept="batch", fg_pixels=3))
    true_prob = logits.softmax(1).gather(1, target.unsqueeze(1)).squeeze(1)
    assert torch.allclose(true_prob, torch.full_like(true_prob, 0.9))
    assert target.flatten().tolist() == [1, 1, 1] + [0] * 13


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 1}, "Sweep.size must be ≥ 2"),
        ({"rest_p": 1.0}, "Sweep.rest_p must lie in (0, 1)"),
        ({"swept": "image"}, "Sweep.swept must be one of"),
        ({"size": 4, "fg_pixels": 16}, "Sweep.fg_pixels must lie in [1, 15]"),
        ({"size": 4, "fg_pixels": 0}, "Sweep.fg_pixels must lie in [1, 15]"),
    ],
)
def test_sweep_rejects_impossible_batches(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Sweep(**kwargs)


# --- the paper's gradient claims ------------------------------------------------------------------------------

BATCH = Sweep(size=4, swept="batch", fg_pixels=5)
PIXEL = Sweep(size=4, rest_p=0.9, fg_pixels=5)


@pytest.mark.parametrize("sweep", [PIXEL, BATCH], ids=["pixel", "batch"])
def test_ce_gradients_at_the_swept_pixel(sweep):
    ce = figures.loss_curve("ce", PS, sweep)
    n = 16
    np.testing.assert_allclose(ce["grad"], -1 / (n * PS), rtol=1e-9)  # ∂(−(1/N) Σ log p)/∂p_i
    np.testing.assert_allclose(ce["grad_logit"], (PS - 1) / n, rtol=1e-9)  # (p − t)/N for the true class


def dice_gradient_by_hand(p: float, sweep: Sweep, smooth: float = 1.0) -> float:
    """∂L_Dice/∂q at the swept (foreground) pixel, from eq. 3-4 with smoothing s, both classes included."""
    true_p = np.full(sweep.n, p if sweep.swept == "batch" else sweep.rest_p)
    true_p[0] = p
    fg = np.arange(sweep.n) < sweep.n_fg
    q = np.where(fg, true_p, 1 - true_p)  # foreground probability of every pixel
    grad = 0.0
    for probs, labels, sign in ((q, fg, 1.0), (1 - q, ~fg, -1.0)):  # class 1 moves with q, class 0 against it
        inter, card = (probs * labels).sum(), labels.sum() + probs.sum()
        t_i = float(labels[0])  # the swept pixel is foreground: t = 1 in class 1, 0 in class 0
        d_dice = (2 * t_i * (card + smooth) - (2 * inter + smooth)) / (card + smooth) ** 2
        grad += sign * d_dice
    return -grad / 2  # L_Dice = 1 − mean over the 2 classes


@pytest.mark.parametrize("sweep", [PIXEL, BATCH], ids=["pixel", "batch"])
def test_dice_ml_and_additive_gradients_against_hand_computation(sweep):
    curves = {name: figures.loss_curve(name, PS, sweep) for name in ("ce", "dice", "ml")}
    add = figures.loss_curve("additive", PS, sweep, lam=0.3)
    dice_hand = np.array([dice_gradient_by_hand(p, sweep) for p in PS])
    np.testing.assert_allclose(curves["dice"]["grad"], dice_hand, rtol=1e-9)
    # ML, product rule (eq. 6): ∂(L_Dice·L_CE) = ∂L_Dice·L_CE + L_Dice·∂L_CE, with CE's −1/(N p) by hand.
    ml_hand = dice_hand * curves["ce"]["value"] + curves["dice"]["value"] * (-1 / (16 * PS))
    np.testing.assert_allclose(curves["ml"]["grad"], ml_hand, rtol=1e-9)
    np.testing.assert_allclose(add["grad"], 0.3 * dice_hand + 0.7 * (-1 / (16 * PS)), rtol=1e-9)


@pytest.mark.parametrize("sweep", [PIXEL, BATCH], ids=["pixel", "batch"])
@pytest.mark.parametrize(
    ("name", "kwargs"), [("dice", {}), ("ml", {}), ("caml", {}), ("caml", {"pbar": "per_pixel", "alpha_grad": "full"})]
)
def test_logit_gradient_is_the_probability_gradient_times_p_one_minus_p(sweep, name, kwargs):
    # Binary softmax: ∂L/∂z_y = p(1 − p)·∂L/∂p for every loss, so any ratio of two losses' gradients is the same
    # w.r.t. p and w.r.t. the logit (docs/paper-claims.md, (d)).
    c = figures.loss_curve(name, PS, sweep, **kwargs)
    np.testing.assert_allclose(c["grad_logit"], PS * (1 - PS) * c["grad"], rtol=1e-9, atol=1e-15)


def test_caml_gradient_at_one_pixel_against_the_chain_rule():
    # Default CAML, one pixel swept: L = L_Dice·L_CE^α, α = (1 − p̄)^D with D held constant (eq. 14-15).
    # ∂L/∂p_i = ∂L_Dice·L_CE^α + L_Dice·L_CE^α·(α/L_CE·∂L_CE + log L_CE·∂α), ∂α = −D(1 − p̄)^(D−1)/N.
    n = 16
    caml = figures.loss_curve("caml", PS, PIXEL)
    ce, dice = figures.loss_curve("ce", PS, PIXEL), figures.loss_curve("dice", PS, PIXEL)
    alpha, d, p_bar = caml["alpha"], caml["dice_coef"], caml["p_bar"]
    np.testing.assert_allclose(p_bar, (PS + 15 * 0.9) / n, rtol=1e-12)
    d_alpha = -d * (1 - p_bar) ** (d - 1) / n
    ce_pow = ce["value"] ** alpha
    expected = dice["grad"] * ce_pow + dice["value"] * ce_pow * (
        alpha / ce["value"] * ce["grad"] + np.log(ce["value"]) * d_alpha
    )
    np.testing.assert_allclose(caml["grad"], expected, rtol=1e-9)


GRID = np.linspace(0.01, 0.99, 99)


@pytest.mark.parametrize(
    ("ratio", "verdict", "p_star"),
    [
        (2 - 2 * GRID, figures.HOLDS, 0.5),  # above 1 below p = 0.5, below 1 above it
        (0.5 + GRID, figures.REVERSED, 0.5),
        (np.full_like(GRID, 0.5), figures.SMALLER, None),
        (np.full_like(GRID, 2.0), figures.LARGER, None),
        (1 + 0.5 * np.sin(4 * np.pi * GRID), figures.MIXED, 0.25),
    ],
)
def test_amplify_suppress_verdict(ratio, verdict, p_star):
    got, crossing = figures.amplify_suppress_verdict(GRID, ratio)
    assert got == verdict
    assert np.isnan(crossing) if p_star is None else crossing == pytest.approx(p_star, abs=0.01)


@pytest.mark.parametrize(
    ("magnitude", "verdict", "peak"),
    [
        (1 / GRID, figures.HOLDS, 0.01),
        (GRID * (1 - GRID), figures.FAILS, 0.5),
        (1 / GRID * (1 + 0.05 * (GRID > 0.5)), figures.HOLDS, 0.01),  # a 5 % step is within the 10 % tolerance
        (1 / GRID * (1 + 0.5 * (GRID > 0.5)), figures.FAILS, 0.01),
    ],
)
def test_shrinks_verdict(magnitude, verdict, peak):
    assert figures.shrinks_verdict(GRID, magnitude) == (verdict, pytest.approx(peak))


@pytest.mark.parametrize(
    ("ratio", "verdict", "p_star"),
    [
        (np.full_like(GRID, 2.0), figures.HOLDS, None),
        (2 - 2 * GRID, figures.HOLDS, 0.5),  # > 1 on the whole hard range, crossing at its end
        (1.25 - GRID, figures.PARTLY, 0.25),
        (np.full_like(GRID, 0.5), figures.FAILS, None),
    ],
)
def test_hard_larger_verdict(ratio, verdict, p_star):
    got, crossing = figures.hard_larger_verdict(GRID, ratio)
    assert got == verdict
    assert np.isnan(crossing) if p_star is None else crossing == pytest.approx(p_star, abs=0.01)


@pytest.mark.parametrize(
    ("ratio", "verdict", "p_star"),
    [
        (np.full_like(GRID, 1.05), figures.HOLDS, 0.01),
        (np.maximum(1.885 - GRID, 1), figures.HOLDS, 0.79),  # within 1.1 from p = 0.785 on
        (1 + 10 * GRID**8, figures.LARGER, None),
        (np.full_like(GRID, 0.5), figures.SMALLER, None),
        (1 + 0.5 * np.sign(np.sin(200 * GRID)), figures.MIXED, None),
    ],
)
def test_approximates_verdict(ratio, verdict, p_star):
    got, from_p = figures.approximates_verdict(GRID, ratio)
    assert got == verdict
    assert np.isnan(from_p) if p_star is None else from_p == pytest.approx(p_star)


def test_falls_and_not_monotone_verdicts():
    assert figures.falls_verdict(GRID, -1 / GRID)[0] == figures.HOLDS
    assert figures.falls_verdict(GRID, GRID - 0.95) == (figures.FAILS, pytest.approx(0.95))
    assert figures.not_monotone_verdict(GRID, (GRID - 0.7) ** 2) == (figures.HOLDS, pytest.approx(0.7))
    assert figures.not_monotone_verdict(GRID, 1 / GRID) == (figures.FAILS, pytest.approx(0.99))


# The documented verdicts (docs/paper-claims.md), on the loss curves themselves: balanced classes, N = 64.
CLAIM_PS = figures.claim_grid(33)


def curves_of(sweep, *labels):
    losses = {**figures.GRADIENT_LOSSES, **figures.caml_variants()}
    return {label: figures.loss_curve(losses[label][0], CLAIM_PS, sweep, **losses[label][1]) for label in labels}


def magnitude_ratio(curves, a, b):
    return np.abs(curves[a]["grad"]) / np.abs(curves[b]["grad"])


def test_ml_amplifies_and_suppresses_only_when_the_whole_batch_moves():
    batch = curves_of(Sweep(8, swept="batch"), "ML", "CE")
    verdict, crossing = figures.amplify_suppress_verdict(CLAIM_PS, magnitude_ratio(batch, "ML", "CE"))
    assert verdict == figures.HOLDS and 0.3 < crossing < 0.45
    pixel = curves_of(Sweep(8, rest_p=0.9), "ML", "CE")
    ratio = magnitude_ratio(pixel, "ML", "CE")
    assert figures.amplify_suppress_verdict(CLAIM_PS, ratio)[0] == figures.SMALLER
    assert ratio[-1] > ratio[0]  # relative to CE, ML favours the confident pixel: the claim's tilt reversed


def test_default_caml_tends_to_dice_not_ml_and_its_ce_factor_has_a_minimum():
    c = curves_of(Sweep(8, swept="batch"), "CAML", "ML", "Dice")
    assert magnitude_ratio(c, "CAML", "Dice")[-1] == pytest.approx(1, abs=0.03)  # p = 0.999
    assert magnitude_ratio(c, "CAML", "ML")[-1] > 100
    verdict, p_min = figures.not_monotone_verdict(CLAIM_PS, c["CAML"]["value"] / c["Dice"]["value"])
    assert verdict == figures.HOLDS and 0.65 < p_min < 0.85


def test_per_pixel_caml_rises_with_p_for_confident_pixels_unless_alpha_is_detached():
    labels = [figures.caml_label("per_pixel", grad) for grad in ("pbar", "none")]
    c = curves_of(Sweep(8, rest_p=0.6), *labels)
    verdict, from_p = figures.falls_verdict(CLAIM_PS, c[labels[0]]["grad"])
    assert verdict == figures.FAILS and 0.9 < from_p < 1
    assert figures.falls_verdict(CLAIM_PS, c[labels[1]]["grad"])[0] == figures.HOLDS


def test_caml_variants_cover_every_reading_and_gradient_path():
    from typing import get_args

    from lightning_seg.losses.paper import AlphaGrad, PBar

    variants = figures.caml_variants()
    assert len(variants) == len(get_args(PBar)) * len(get_args(AlphaGrad))
    assert {(kw["pbar"], kw["alpha_grad"]) for _, kw in variants.values()} == {
        (p, g) for p in get_args(PBar) for g in get_args(AlphaGrad)
    }


@pytest.fixture(scope="module")
def small_claims():
    return figures.claim_curves(figures.claim_grid(5), size=4)


def test_claims_table_rows(small_claims):
    rows = figures.claims_table(small_claims)
    n_caml = len(figures.caml_variants())
    n_readings = n_caml // 3
    # Per setting: w.r.t. p and the logit, ML vs 3 references, |∂L| of 4 + n_caml losses, 3 CAML rows per
    # variant; the sign of 4 + n_caml losses; the CE factor per reading when the whole batch moves (3 settings).
    per_setting = 2 * (3 + (4 + n_caml) + 3 * n_caml) + (4 + n_caml)
    assert len(rows) == 12 * per_setting + 3 * n_readings
    assert {r["claim"] for r in rows} == set(figures.CLAIMS)
    assert all(list(r) == list(figures.CLAIM_COLUMNS) for r in rows)
    # The binary identity: every ratio claim has the same verdict and values w.r.t. p and w.r.t. the logit.
    ratio_claims = {"ml_amplifies_uncertain", "caml_hard_larger", "caml_approximates_ml", "caml_approximates_dice"}
    key = ("claim", "swept", "rest_p", "balance", "loss", "reference")
    by_wrt = {(r["wrt"], *(r[k] for k in key)): r for r in rows if r["claim"] in ratio_claims}
    for (wrt, *rest), r in by_wrt.items():
        if wrt == "p":
            other = by_wrt[("logit", *rest)]
            assert other["verdict"] == r["verdict"] and other["at_0.5"] == pytest.approx(r["at_0.5"], rel=1e-9)
    assert {r["balance"]: r["swept_class_pixels"] for r in rows} == {"rare": 1, "balanced": 8, "common": 15}


def test_claims_command_writes_the_table_and_readable_plots(tmp_path):
    paths = figures.main(["claims", "--out", str(tmp_path), "--size", "4", "--points", "5"])
    names = [p.name for p in paths]
    assert names == [
        "claims_ml_ratio.png",
        "claims_gradients.png",
        "claims_caml_readings.png",
        "claims_caml_balance.png",
        "claims_caml_limit.png",
        "claims.csv",
        "claims.md",
    ]
    for path in paths[:5]:
        assert_png(path, 400)
    with paths[5].open() as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == list(figures.CLAIM_COLUMNS)
    assert {r["verdict"] for r in rows} <= {
        figures.HOLDS,
        figures.FAILS,
        figures.PARTLY,
        figures.REVERSED,
        figures.MIXED,
        figures.LARGER,
        figures.SMALLER,
    }
    text = paths[6].read_text()
    assert all(f"## {claim}" in text for claim in figures.CLAIMS)


def test_claims_command_rejects_a_bad_grid(tmp_path, capsys):
    with pytest.raises(ValueError, match="at least 3 points"):
        figures.main(["claims", "--out", str(tmp_path), "--points", "2"])


def test_gradients_command_writes_readable_pngs(tmp_path):
    paths = figures.main(["gradients", "--out", str(tmp_path)])
    assert [p.name for p in paths] == ["gradients.png", "caml_vs_ml.png", "gradients.csv"]
    assert_png(paths[0], 300)
    assert_png(paths[1], 300)
    with paths[2].open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 99 and all(np.isfinite(float(r["grad"])) for r in rows)


MODEL = "unet_base_channels=8_depth=3"  # the small U-Net of configs/data/synthetic.yaml


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Two tiny fits (CE, CAML), each in its run folder."""
    root = tmp_path_factory.mktemp("runs")
    for loss in ("ce", "caml"):
        build_cli(
            [
                "fit",
                *DATA_ARGS,
                *SMALL_RUN,
                f"--model.init_args.loss={loss}",
                f"--trainer.default_root_dir={root / loss}",
            ]
        )
    return root


def best(runs_root: Path, loss: str) -> Path:
    return RunFolder(runs_root / loss).best_path()


def test_overlays_command_from_two_checkpoints(runs_root, tmp_path):
    args = ["overlays", "--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / "data/synthetic.yaml")]
    args += ["--ckpt-a", str(best(runs_root, "ce")), "--ckpt-b", str(best(runs_root, "caml"))]
    args += ["--out", str(tmp_path), "--num-images", "3"]
    (path,) = figures.main([*args, "--data.init_args.num_images=20", "--data.init_args.image_size=32"])
    assert path == tmp_path / "overlays.png"
    width, height = assert_png(path, 200)
    assert height > width / 2  # three rows of four panels
    assert not list(tmp_path.glob("**/*.ckpt")), "making the figure must not train or save"


def test_weights_of_both_checkpoints_are_used(runs_root):
    module = build_cli([*DATA_ARGS, "--trainer.logger=false"], run=False).model
    a, label_a = figures._load_weights(module, best(runs_root, "ce"))
    b, label_b = figures._load_weights(module, best(runs_root, "caml"))
    assert (label_a, label_b) == ("ce", "caml")  # the runs' loss labels, from their run.json
    state = torch.load(best(runs_root, "ce"), weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in a.state_dict().items() if k in state)
    assert any(not torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def fake_run(runs_root: Path, name: str, **keys) -> Path:
    """A run folder with the CE run's record under other keys, and logs written by hand."""
    record = json.loads((runs_root / "ce" / Records.RUN).read_text())
    record["keys"].update(keys)
    folder = runs_root / name
    (folder / "logs" / "version_0").mkdir(parents=True)
    (folder / Records.RUN).write_text(json.dumps(record))
    return folder


def test_compare_plots_from_fit_logs(runs_root, tmp_path):
    # A second seed of CE, written by hand, and a second fraction group.
    for name, scale, keys in (("ce_seed1", 0.9, {"seed": 1}), ("ml_half", 1.0, {"loss": "ml", "fraction": 0.5})):
        logs = fake_run(runs_root, name, **keys) / "logs" / "version_0"
        with (logs / "metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            names = [m for m, _ in plots.PANELS]
            writer.writerow(["epoch", "step", *names])
            for step in range(4):
                writer.writerow([step // 2, step, *(scale * (0.5 + 0.1 * step) for _ in names[:-1]), ""])
            for epoch in range(2):
                writer.writerow([epoch, 2 * epoch + 1, *([""] * 5), 0.3 + 0.1 * epoch])
    runs = plots.find_runs(runs_root)
    assert sorted((k.loss, k.fraction, k.seed) for k, _, _ in runs) == [
        ("caml", 1.0, 0),
        ("ce", 1.0, 0),
        ("ce", 1.0, 1),
        ("ml", 0.5, 0),
    ]
    series = plots.read_metrics(runs_root / "ce" / "logs/version_0/metrics.csv")
    assert {m for m, _ in plots.PANELS} <= set(series)
    # One row per training step: 2 epochs × 3 batches under SMALL_RUN; validations after steps 3 and 6, logged
    # at Lightning's step index of the last training step before them.
    assert len(series["train/p_bar"]) == 2 * 3 and sorted(series["val/miou"]) == [2, 5]
    # A resumed run goes on in version_1: its curves join both logs.
    resumed = runs_root / "ml_half" / "logs"
    (resumed / "version_1").mkdir()
    (resumed / "version_1" / "metrics.csv").write_text("epoch,step,val/miou\n1,3,0.9\n2,5,0.6\n")
    (paths,) = [p for k, _, p in plots.find_runs(runs_root) if k.loss == "ml"]
    assert [p.parent.name for p in paths] == ["version_0", "version_1"]
    assert plots.read_metrics(paths)["val/miou"] == {1: 0.3, 3: 0.9, 5: 0.6}

    paths = plots.main(["compare", str(runs_root), "--out", str(tmp_path / "plots")])
    assert sorted(p.name for p in paths) == [f"synthetic_{MODEL}_frac0.5.png", f"synthetic_{MODEL}_frac1.png"]
    for path in paths:
        assert_png(path, 300)
    # --loss keeps the runs of those labels only
    only_ml = plots.main(["compare", str(runs_root), "--out", str(tmp_path / "ml"), "--loss", "ml"])
    assert [p.name for p in only_ml] == [f"synthetic_{MODEL}_frac0.5.png"]
    with pytest.raises(SystemExit) as exit_info:
        plots.main(["compare", str(runs_root), "--out", str(tmp_path / "none"), "--loss", "focal"])
    assert exit_info.value.code == 2


def test_compare_draws_the_per_image_test_scores_of_tested_runs(runs_root, tmp_path):
    import shutil

    from lightning_seg.evaluation.records import write_per_image

    runs_root = shutil.copytree(runs_root, tmp_path / "runs")  # the fixture's runs stay untested for the others
    base = {"sample_group": "", "case": "both_present", "target_pixels": 5, "pred_pixels": 5, "iou": 0.5}
    folders = {f.identity().keys: f.path for f in find_run_folders(runs_root)}
    dice_of = {"ce": 0.4, "caml": 0.6}
    tested = {keys: path for keys, path in folders.items() if keys.loss in dice_of and keys.seed == 0}
    assert sorted(k.loss for k in tested) == ["caml", "ce"]
    for keys, run in tested.items():
        dice = dice_of[keys.loss]
        rows = [
            {**base, "id": f"{i:04d}", "class": c, "dice": dice + i / 100, "hd95": 3.0 + i, "nsd": dice, "cldice": dice if c == "curve" else float("nan")}
            for i in range(4)
            for c in ("background", "curve")
        ]  # fmt: skip
        write_per_image(run / Records.PER_IMAGE, rows)
        (run / Records.EVALUATION).write_text('{"calibration": {"ece": %s}}' % (dice / 10))
    paths = plots.compare(runs_root, tmp_path / "plots")
    (group,) = {keys.group for keys in tested}
    figure = tmp_path / "plots" / (group.replace("/", "_") + "_test.png")
    assert figure in paths and len(paths) == len({p.name for p in paths})
    assert_png(figure, 300)
    assert plots.test_figure("g", {"ce": [tmp_path]}, {"ce": "red"}, tmp_path / "none.png") is None
