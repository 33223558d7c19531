"""The test-time hook: rows per image and class, records in the run folder, numbers logged, W&B media."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_seg import SegmentationModule
from lightning_seg.evaluation import (
    EvaluationSettings,
    TestEvaluation,
    read_per_image,
)
from lightning_seg.evaluation.records import PER_IMAGE_COLUMNS
from lightning_seg.run import Records
from tests.conftest import FixedLogits

CLASSES = ["background", "vessel", "blob"]


def sample(pred: np.ndarray, mask: np.ndarray, sample_id: str) -> dict:
    pred_t = torch.from_numpy(pred).float()
    return {"image": torch.stack([torch.zeros_like(pred_t), pred_t]), "mask": torch.from_numpy(mask), "id": sample_id}


def two_images() -> list[dict]:
    """Image "a": a vessel found exactly and a blob missed. Image "b": no vessel, a blob invented."""
    mask_a = np.zeros((12, 16), np.int64)
    mask_a[5, 2:14] = 1
    mask_a[1:3, 1:3] = 2
    pred_a = mask_a.copy()
    pred_a[1:3, 1:3] = 0
    mask_b = np.zeros((12, 16), np.int64)
    mask_b[11, :] = 255  # ignored
    pred_b = mask_b.copy()
    pred_b[11, :] = 0
    pred_b[8:10, 8:10] = 2
    return [sample(pred_a, mask_a, "a"), sample(pred_b, mask_b, "b")]


def test_rows_follow_the_policy_for_every_image_and_class():
    evaluation = TestEvaluation(CLASSES, ["vessel"], ignore_index=255)
    batch = torch.utils.data.default_collate(two_images())
    logits = FixedLogits(3, scale=5)(batch["image"])
    evaluation.update(logits, batch["mask"], batch["id"], sample_group=lambda i: f"image-{i}")
    rows = {(r["id"], r["class"]): r for r in evaluation.rows}
    assert len(evaluation.rows) == 2 * 3
    assert rows["a", "vessel"]["dice"] == 1.0 and rows["a", "vessel"]["cldice"] == 1.0
    assert rows["a", "blob"]["case"] == "missed" and rows["a", "blob"]["hd95"] == pytest.approx(20.0)  # √(12²+16²)
    assert rows["b", "vessel"]["case"] == "both_empty" and math.isnan(rows["b", "vessel"]["dice"])
    assert rows["b", "blob"]["case"] == "false_positive" and rows["b", "blob"]["nsd"] == 0.0
    assert rows["b", "background"]["target_pixels"] == 11 * 16  # the ignored row left out
    assert math.isnan(rows["a", "blob"]["cldice"])  # not curvilinear
    assert rows["b", "blob"]["sample_group"] == "image-b"
    metrics = evaluation.logged_metrics()
    assert metrics["test/hd95_blob"] == pytest.approx(20.0)  # both images at the worst
    assert metrics["test/cldice_vessel"] == 1.0  # image b has no vessel anywhere: excluded, not 0
    assert "test/cldice_blob" not in metrics
    summary = evaluation.class_summary()
    assert summary["vessel"]["cases"] == {"both_present": 1, "both_empty": 1} and summary["vessel"]["dice"]["n"] == 1


def test_records_are_strict_and_round_trip(tmp_path):
    evaluation = TestEvaluation(CLASSES, ["vessel"], ignore_index=255, settings=EvaluationSettings(nsd_tolerance=1.5))
    batch = torch.utils.data.default_collate(two_images())
    evaluation.update(FixedLogits(3, scale=5)(batch["image"]), batch["mask"], batch["id"])
    files = evaluation.write(tmp_path, {"ckpt_path": "x.ckpt"})
    assert files == {
        "per_image": tmp_path / Records.PER_IMAGE,
        "evaluation": tmp_path / Records.EVALUATION,
        "reliability": tmp_path / Records.RELIABILITY,
    }
    rows = read_per_image(files["per_image"])
    assert [(r["id"], r["class"]) for r in rows] == [(i, c) for i in "ab" for c in CLASSES]
    for got, want in zip(rows, evaluation.rows, strict=True):
        for column in PER_IMAGE_COLUMNS:
            assert got[column] == want[column] or (math.isnan(got[column]) and math.isnan(want[column]))

    def no_nan(name):
        raise AssertionError(f"{name} in a strict JSON record")

    record = json.loads(files["evaluation"].read_text(), parse_constant=no_nan)
    assert record["ckpt_path"] == "x.ckpt" and record["images"] == 2
    assert record["settings"] == {
        "nsd_tolerance": 1.5,
        "both_empty": "exclude",
        "calibration_bins": 15,
        "hd_percentile": 95.0,
        "spacing": "1 pixel",
    }
    assert set(record["libraries"]) == {"monai", "scikit-image", "torchmetrics", "torch", "scipy"}
    assert record["per_class"]["vessel"]["cldice"] == {"mean": 1.0, "std": None, "n": 1}
    assert record["calibration"]["pixels"] == 12 * 16 + 11 * 16


def test_ids_default_to_the_test_order_and_merge_keeps_each_sample_once():
    evaluation = TestEvaluation(CLASSES, ignore_index=255)
    batch = torch.utils.data.default_collate(two_images())
    logits = FixedLogits(3, scale=5)(batch["image"])
    evaluation.update(logits, batch["mask"])
    evaluation.update(logits[:1], batch["mask"][:1])
    assert sorted({r["id"] for r in evaluation.rows}) == ["00000", "00001", "00002"]
    other = TestEvaluation(CLASSES, ignore_index=255)
    other.update(logits[:1], batch["mask"][:1], ["00000"])  # a repeat, as a distributed sampler pads
    pixels = evaluation.calibration.count.sum()
    evaluation.merge(other)
    assert len(evaluation.rows) == 3 * 3 and evaluation.calibration.count.sum() > pixels


def test_bad_settings_and_classes():
    with pytest.raises(ValueError, match="nsd_tolerance must be ≥ 0"):
        EvaluationSettings(nsd_tolerance=-1)
    with pytest.raises(ValueError, match="both_empty must be one of"):
        EvaluationSettings(both_empty="one")
    with pytest.raises(ValueError, match="calibration_bins must be ≥ 1"):
        EvaluationSettings(calibration_bins=0)
    with pytest.raises(ValueError, match=r"curvilinear_classes \['vessels'\] are not among"):
        SegmentationModule(model="tiny", num_classes=3, class_names=CLASSES, curvilinear_classes=["vessels"])
    with pytest.raises(ValueError, match="got 1 ids for a batch of 2"):
        batch = torch.utils.data.default_collate(two_images())
        TestEvaluation(CLASSES, ignore_index=255).update(FixedLogits(3, scale=5)(batch["image"]), batch["mask"], ["a"])
    with pytest.raises(ValueError, match=r"target has labels outside \[0, 3\) \(ignore_index=None\)"):
        TestEvaluation(CLASSES).update(FixedLogits(3, scale=5)(batch["image"]), batch["mask"], ["a", "b"])


def test_module_test_writes_the_records_and_logs_the_numbers(tmp_path):
    module = SegmentationModule(
        model="tiny", num_classes=3, in_channels=2, class_names=CLASSES, curvilinear_classes=["vessel"]
    )
    module.model = FixedLogits(3, scale=5)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, dataloaders=DataLoader(two_images(), batch_size=1))
    metrics = trainer.callback_metrics
    # logits 5·one-hot: the top label's confidence is e⁵/(e⁵ + 2) everywhere
    confidence = math.exp(5) / (math.exp(5) + 2)
    accuracy = 1 - 8 / (12 * 16 + 11 * 16)  # wrong: the missed 2×2 blob of a, the invented one of b
    assert metrics["test/ece"].item() == pytest.approx(abs(confidence - accuracy), rel=1e-5)
    assert metrics["test/hd95_blob"].item() == pytest.approx(20.0)
    assert metrics["test/cldice_vessel"].item() == 1.0
    assert "test/miou" in metrics  # the dataset-level numbers stay
    rows = read_per_image(tmp_path / Records.PER_IMAGE)
    assert len(rows) == 2 * 3
    assert (tmp_path / Records.RELIABILITY).is_file() and (tmp_path / Records.EVALUATION).is_file()


def test_validation_does_not_evaluate_per_image(tmp_path):
    module = SegmentationModule(model="tiny", num_classes=3, in_channels=2, class_names=CLASSES)
    module.model = FixedLogits(3, scale=5)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=DataLoader(two_images(), batch_size=1))
    assert module.test_evaluation is None and not (tmp_path / Records.PER_IMAGE).exists()


def test_wandb_gets_the_reliability_diagram_and_the_table(tmp_path):
    from lightning_seg.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    module = SegmentationModule(model="tiny", num_classes=3, in_channels=2, class_names=CLASSES)
    module.model = FixedLogits(3, scale=5)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=logger, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, dataloaders=DataLoader(two_images(), batch_size=2))
    run = logger.experiment
    assert run.summary["test/ece"] == pytest.approx(trainer.callback_metrics["test/ece"].item())
    media = {p.name.split("_")[0] for p in (tmp_path / "wandb").glob("offline-run-*/files/media/*/test/*")}
    assert {"reliability", "per"} <= media
