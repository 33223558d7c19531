"""Aggregation: mean ± std and Wilcoxon p-values against hand-computed values, files in the paper's layout."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from lightning_seg.evaluation.records import write_per_image
from lightning_seg.grid.aggregate import aggregate, collect, load_paper_tables, paired_tests, summarize
from lightning_seg.grid.cli import main as grid_main
from lightning_seg.run import Records


def write_result(
    root: Path, loss: str, fold: int, seed: int, miou: float, ious: dict, cell: str = "c0", **keys
) -> Path:
    """A run folder with its run.json (keys, settings, cell) and a result.json, as a grid leaves them."""
    keys = {"dataset": "chase", "model": "unet", "loss": loss, "fraction": 1.0, "fold": fold, "seed": seed, **keys}
    metrics = {"test/loss": 0.1, "test/miou": miou, **{f"test/iou_{name}": v for name, v in ious.items()}}
    folder = root / keys["dataset"] / keys["model"] / loss / f"fold{fold}_frac{keys['fraction']:g}_seed{seed}-{cell}"
    folder.mkdir(parents=True)
    settings = {"trainer": {"max_epochs": int(cell.removeprefix("c")) or 200}}
    (folder / Records.RUN).write_text(json.dumps({"keys": keys, "settings": settings, "cell": cell}))
    (folder / Records.RESULT).write_text(json.dumps({"keys": keys, "metrics": metrics, "cell": cell}))
    return folder


#: test mIoU (fractions) of 5 paired runs (fold f, seed 0); CAML - CE differences: +1, -2, +3, +4, +5 (in %)
CE = [0.60, 0.62, 0.58, 0.61, 0.59]
CAML = [0.61, 0.60, 0.61, 0.65, 0.64]


@pytest.fixture
def grid_root(tmp_path) -> Path:
    for fold, (ce, caml) in enumerate(zip(CE, CAML, strict=True)):
        write_result(tmp_path, "ce", fold, 0, ce, {"background": 0.9, "retinal vessel": 2 * ce - 0.9})
        write_result(tmp_path, "caml", fold, 0, caml, {"background": 0.9, "retinal vessel": 2 * caml - 0.9})
        # ML beats CE on every pair: +1 % each
        write_result(tmp_path, "ml", fold, 0, ce + 0.01, {"background": 0.9, "retinal vessel": None})
    return tmp_path


def test_mean_and_sample_std_per_group_in_percent(grid_root):
    summaries = {s.group[3]: s for s in summarize(collect(grid_root))}
    assert list(summaries) == ["ce", "ml", "caml"]  # the paper's row order
    mean, std = summaries["ce"].mean_std("miou")
    assert mean == pytest.approx(60.0)
    # sample std of 60, 62, 58, 61, 59: squares 0 + 4 + 4 + 1 + 1 = 10, / 4 = 2.5
    assert std == pytest.approx(math.sqrt(2.5))
    assert summaries["ce"].n == 5
    assert summaries["caml"].mean_std("iou_retinal vessel")[0] == pytest.approx(2 * 62.2 - 90)
    # a class absent in every run (null IoU) has no mean, rather than a made-up 0
    assert all(math.isnan(v) for v in summaries["ml"].mean_std("iou_retinal vessel"))


def test_wilcoxon_p_values_match_the_exact_distribution(grid_root):
    tests = {(r["loss"], r["baseline"]): r for r in paired_tests(collect(grid_root))}
    assert set(tests) == {("ml", "ce"), ("caml", "ce")}  # candidates against baselines only
    # ML - CE = +1 on all 5 pairs: W- = 0, P(W <= 0) = 1/32 for n = 5, two-sided 2/32
    assert tests["ml", "ce"]["p_value"] == pytest.approx(2 / 32)
    assert tests["ml", "ce"]["mean_diff"] == pytest.approx(1.0)
    # CAML - CE = +1, -2, +3, +4, +5: ranks 1..5, W- = 2; subsets of {1..5} with rank sum <= 2: {}, {1}, {2}
    assert tests["caml", "ce"]["statistic"] == 2
    assert tests["caml", "ce"]["p_value"] == pytest.approx(2 * 3 / 32)
    assert tests["caml", "ce"]["n_pairs"] == 5 and tests["caml", "ce"]["mean_diff"] == pytest.approx(2.2)


def test_runs_are_paired_by_fold_and_seed_and_identical_runs_give_no_p(tmp_path):
    for fold in range(3):
        write_result(tmp_path, "ce", fold, 0, 0.5, {})
        write_result(tmp_path, "ml", fold, 0, 0.5, {})
    write_result(tmp_path, "ml", 3, 0, 0.9, {})  # no CE partner: left out of the pairs
    (row,) = paired_tests(collect(tmp_path))
    assert row["n_pairs"] == 3 and row["mean_diff"] == 0 and math.isnan(row["p_value"])


def test_groups_never_mix_datasets_models_or_fractions(tmp_path):
    write_result(tmp_path, "ce", 0, 0, 0.5, {})
    write_result(tmp_path, "ml", 0, 0, 0.6, {}, fraction=0.25)
    write_result(tmp_path, "ml", 0, 0, 0.6, {}, model="transunet")
    assert paired_tests(collect(tmp_path)) == []  # ML has no baseline in its own group
    groups = [s.group for s in summarize(collect(tmp_path))]
    assert groups == [("chase", "unet", 1.0, "ce"), ("chase", "unet", 0.25, "ml"), ("chase", "transunet", 1.0, "ml")]


def test_files_in_the_papers_layout_beside_the_papers_numbers(grid_root, tmp_path, capsys):
    out = tmp_path / "tables"
    assert grid_main(["aggregate", str(grid_root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "results.md").read_text()
    assert markdown in printed
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert header == "| model | fraction | loss | n | mIoU | background | retinal vessel | p vs baseline (Δ mIoU) |"
    ce_row = lines.index(next(line for line in lines if line.startswith("| unet | 1 | ce |")))
    assert lines[ce_row] == "| unet | 1 | ce | 5 | 60.00 ± 1.58 | 90.00 ± 0.00 | 30.00 ± 3.16 |  |"
    # Table 2, U-Net full data, CE: 60.13±1.51, background 93.53±0.30, vessel 26.66±2.87
    assert lines[ce_row + 1] == "|  |  | *paper* |  | *60.13 ± 1.51* | *93.53 ± 0.30* | *26.66 ± 2.87* |  |"
    # raw / Holm-adjusted over the dataset's two tests: 2·0.0625 = 0.125, then max(0.125, 0.1875)
    assert "| unet | 1 | ml | 5 | 61.00 ± 1.58 | 90.00 ± 0.00 | – | ce 0.0625 / 0.125 (+1.00) |" in lines
    caml_row = next(line for line in lines if line.startswith("| unet | 1 | caml |"))
    assert caml_row.endswith("| ce 0.188 / 0.188 (+2.20) |")

    with open(out / "summary.csv", newline="") as handle:
        rows = {(r["loss"], r["metric"]): r for r in csv.DictReader(handle)}
    assert float(rows["caml", "miou"]["mean"]) == pytest.approx(62.2)
    assert float(rows["caml", "miou"]["paper_mean"]) == 63.00 and float(rows["caml", "miou"]["paper_std"]) == 1.40
    with open(out / "wilcoxon.csv", newline="") as handle:
        tests = list(csv.DictReader(handle))
    assert [(t["loss"], t["baseline"], float(t["p_value"]), float(t["p_holm"])) for t in tests] == [
        ("ml", "ce", 0.0625, 0.125),
        ("caml", "ce", 0.1875, 0.1875),
    ]
    # run-level rows carry a bootstrap interval over runs
    assert rows["caml", "miou"]["level"] == "run"
    assert float(rows["caml", "miou"]["ci_low"]) < 62.2 < float(rows["caml", "miou"]["ci_high"])
    assert not list(out.glob(".*.tmp"))


def test_paper_tables_load_keyed_like_the_grid():
    paper = load_paper_tables()
    assert paper["covid19", "unet", 0.125, "caml", "miou"] == (38.06, 0.41)
    assert paper["drosophila", "unet", 1.0, "additive_lam=0.7", "iou_synapse"] == (39.60, 1.00)


def test_runs_of_other_settings_are_never_averaged_together(tmp_path, capsys):
    kept = [write_result(tmp_path, "ce", fold, 0, 0.5, {}) for fold in range(2)]
    write_result(tmp_path, "ce", 0, 0, 0.9, {}, cell="c50")  # the same keys, trained for 50 epochs
    with pytest.raises(
        ValueError, match=r"chase/unet/frac1/ce holds runs of 2 different settings \(trainer.max_epochs 200 → 50; e.g. "
    ):
        aggregate(tmp_path)
    assert grid_main(["aggregate", str(tmp_path)]) == 2
    assert "aggregate one setting at a time" in capsys.readouterr().err
    files = aggregate(tmp_path, folders=kept)  # the runs of one grid invocation
    assert "| unet | 1 | ce | 2 | 50.00 ± 0.00 |" in files["markdown"].read_text()


def test_nothing_to_aggregate_is_an_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no result.json under"):
        aggregate(tmp_path)
    assert grid_main(["aggregate", str(tmp_path)]) == 2
    assert "run the grid first" in capsys.readouterr().err


def write_images(root: Path, loss: str, seed: int, vessel_dice: list[float], tolerance: float = 2.0) -> None:
    """A CHASE run of fold 0 with per-image records: three test images, background Dice 0.9, the vessel's Dice
    as given (NaN: the vessel is absent from that image's target and prediction), ECE 0.1 + seed/100."""
    folder = root / "chase" / "unet" / loss / f"fold0_frac1_seed{seed}"
    keys = {"dataset": "chase", "model": "unet", "loss": loss, "fraction": 1.0, "fold": 0, "seed": seed}
    metrics = {
        "test/miou": 0.6,
        "test/ece": 0.1 + seed / 100,
        "test/ece_background": 0.05,
        "test/ece_retinal vessel": 0.2,
    }
    folder.mkdir(parents=True)
    (folder / Records.RUN).write_text(json.dumps({"keys": keys, "settings": {}, "cell": "c0"}))
    (folder / Records.RESULT).write_text(json.dumps({"keys": keys, "metrics": metrics, "cell": "c0"}))
    rows = []
    for index, vessel in enumerate(vessel_dice):
        for name, dice in (("background", 0.9), ("retinal vessel", vessel)):
            empty = math.isnan(dice)
            rows.append(
                {"id": f"Image_0{index}L", "sample_group": f"Image_0{index}L", "class": name,
                 "case": "both_empty" if empty else "both_present", "target_pixels": 0 if empty else 10,
                 "pred_pixels": 0 if empty else 10, "dice": dice, "iou": dice / (2 - dice), "hd95": 10 * (1 - dice),
                 "nsd": dice, "cldice": dice if name == "retinal vessel" else math.nan}
            )  # fmt: skip
    write_per_image(folder / Records.PER_IMAGE, rows)
    settings = {"nsd_tolerance": tolerance, "both_empty": "exclude", "calibration_bins": 15, "hd_percentile": 95.0}
    (folder / Records.EVALUATION).write_text(json.dumps({"settings": settings}))


@pytest.fixture
def image_grid(tmp_path) -> Path:
    root = tmp_path / "grid"
    write_images(root, "ce", 0, [0.5, 0.6, math.nan])
    write_images(root, "ce", 1, [0.7, 0.6, 0.4])
    write_images(root, "caml", 0, [0.6, 0.7, math.nan])
    write_images(root, "caml", 1, [0.8, 0.8, 0.4])
    return root


def test_per_image_metrics_are_summarised_over_images_and_runs(image_grid):
    files = aggregate(image_grid, paper_tables=None)
    with open(files["summary"], newline="") as handle:
        rows = {(r["loss"], r["metric"]): r for r in csv.DictReader(handle)}
    ce_vessel = rows["ce", "image_dice_retinal vessel"]
    # 5 values (the both-empty image of seed 0 has none): 50, 60, 70, 60, 40
    assert ce_vessel["level"] == "image" and ce_vessel["n"] == "2" and ce_vessel["n_values"] == "5"
    assert float(ce_vessel["mean"]) == pytest.approx(56.0)
    assert float(ce_vessel["std"]) == pytest.approx(statistics.stdev([50, 60, 70, 60, 40]))
    assert float(ce_vessel["ci_low"]) <= 56.0 <= float(ce_vessel["ci_high"])
    assert float(rows["ce", "image_hd95_retinal vessel"]["mean"]) == pytest.approx(4.4)  # in pixels, not percent
    # the per-image mean over classes: image 2 of seed 0 has only the background
    assert float(rows["ce", "image_dice"]["mean"]) == pytest.approx(statistics.fmean([70, 75, 90, 80, 75, 65]))
    assert ("ce", "image_cldice_background") not in rows
    # ECE per run, in percent, with an interval over runs
    assert float(rows["ce", "ece"]["mean"]) == pytest.approx(10.5) and rows["ce", "ece"]["level"] == "run"


def test_per_image_pairs_and_their_holm_family(image_grid):
    files = aggregate(image_grid, paper_tables=None)
    with open(files["paired_images"], newline="") as handle:
        tests = {(t["metric"]): t for t in csv.DictReader(handle)}
    vessel = tests["image_dice_retinal vessel"]
    # per image, averaged over both seeds: +10 (0.7 vs 0.6), +15 (0.75 vs 0.6), 0 (0.4 vs 0.4; seed 0 empty)
    assert vessel["n_pairs"] == "3" and float(vessel["mean_diff"]) == pytest.approx(25 / 3)
    # one zero dropped, two positive: exact two-sided p = 2 · 1/4
    assert float(vessel["p_value"]) == pytest.approx(0.5)
    # Holm within (chase, dice): the vessel and mean tests share p 0.5 → 1; background has no difference
    assert float(vessel["p_holm"]) == 1.0 and math.isnan(float(tests["image_dice_background"]["p_value"]))
    markdown = files["markdown"].read_text()
    assert "## chase: calibration and per-image scores" in markdown
    assert "NSD at τ = 2 px" in markdown
    assert "| unet | 1 | caml | ce | dice | " in markdown
    assert "| unet | 1 | ce | 2 | 10.50 ± 0.71 [10.00, 11.00] | 5.00 ± 0.00 [5.00, 5.00] |" in markdown  # ECE


def test_runs_evaluated_with_different_settings_are_not_pooled(tmp_path):
    write_images(tmp_path, "ce", 0, [0.5], tolerance=2.0)
    write_images(tmp_path, "ce", 1, [0.5], tolerance=1.0)
    with pytest.raises(ValueError, match="were evaluated with different settings"):
        aggregate(tmp_path, paper_tables=None)


def test_the_papers_rows_of_one_model_beside_runs_of_a_narrower_one(tmp_path):
    for fold, caml in enumerate(CAML):
        write_result(tmp_path, "caml", fold, 0, caml, {"background": 0.9}, model="unet_base_channels=8")
    paper = load_paper_tables()
    files = aggregate(tmp_path, paper_model="unet")
    rows = list(csv.DictReader(files["summary"].open()))
    (miou,) = [r for r in rows if r["loss"] == "caml" and r["metric"] == "miou"]
    assert miou["model"] == "unet_base_channels=8"
    assert float(miou["paper_mean"]) == paper[("chase", "unet", 1.0, "caml", "miou")][0]
    assert "its unet rows beside every model" in files["markdown"].read_text()
    # without the option the narrower model has no paper row
    plain = list(csv.DictReader(aggregate(tmp_path, out=tmp_path / "plain")["summary"].open()))
    assert all(math.isnan(float(r["paper_mean"])) for r in plain if r["metric"] == "miou")
    with pytest.raises(ValueError, match="--paper-model vnet: the paper has no such model"):
        aggregate(tmp_path, paper_model="vnet")
