"""W&B end to end, offline: a tiny fit through the CLI, then the run's .wandb file read back record by record."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import wandb
import yaml
from PIL import Image
from wandb.proto import wandb_internal_pb2 as pb

from lightning_seg.callbacks import PredictionOverlays
from lightning_seg.callbacks.overlays import PALETTE, colourise, overlay_strip
from lightning_seg.cli import build_cli
from lightning_seg.loggers import WandbLogger
from lightning_seg.run import Records, RunKeys, group_name
from tests.conftest import CONFIGS, SMALL_RUN

LOSS_PARTS = ["train/p_bar", "train/dice_coef", "train/alpha", "train/ce", "train/dice_loss"]


def read_records(path: Path):
    """The protobuf records of a ``.wandb`` file (W&B's LevelDB-style log: 7-byte file header, 32 KiB blocks,
    each chunk with a 7-byte header ``crc32 (4) | length (2) | type (1)``; types FULL=1, FIRST=2, MIDDLE=3, LAST=4;
    the checksum covers the type byte and the chunk). A short or damaged chunk fails with its byte offset.
    """
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, "not a W&B datastore file"
    block, pos, chunks = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        assert len(chunk) == length, f"{path}: the chunk at byte {pos} ends past the end of the file (still written?)"
        assert zlib.crc32(bytes([kind]) + chunk) == crc, (
            f"{path}: the checksum of the chunk at byte {pos} does not match"
        )
        chunks += chunk
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    root = tmp / "run"
    args = [
        "fit",
        *(
            arg
            for name in ("base.yaml", "data/synthetic.yaml", "loggers/wandb.yaml")
            for arg in ("--config", str(CONFIGS / name))
        ),
        *SMALL_RUN,
        "--model.init_args.loss=ml",
        f"--trainer.default_root_dir={root}",
    ]
    cli = build_cli(args)
    for logger in cli.trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
    # finish() can return before W&B's service process has written the whole file (CI saw a cut-off chunk on a
    # loaded machine): stopping the service, as at process exit, closes the file.
    wandb.teardown()
    (wandb_file,) = root.glob("wandb/offline-run-*/run-*.wandb")
    records = list(read_records(wandb_file))
    history: set[str] = set()
    config: dict = {}
    images: list[dict] = []
    run = None
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            # Media are flattened into items with nested keys (key, field): rebuild them.
            nested: dict[str, dict] = {}
            for item in record.history.item:
                path = list(item.nested_key) or [item.key]
                history.add(path[0])
                if len(path) == 2:
                    nested.setdefault(path[0], {})[path[1]] = json.loads(item.value_json)
            images += [v for v in nested.values() if v.get("_type") == "images/separated"]
        elif kind == "config":
            for item in record.config.update:
                config["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif kind == "run":
            run = record.run
    return {
        "cli": cli,
        "root": root,
        "history": history,
        "config": config,
        "images": images,
        "run": run,
        "dir": wandb_file.parent,
    }


def test_loss_parts_are_in_the_wandb_history(wandb_run):
    assert set(LOSS_PARTS) <= wandb_run["history"]
    assert "val/miou" in wandb_run["history"]


def test_resolved_config_and_run_keys_are_in_the_run_config(wandb_run):
    config = wandb_run["config"]
    resolved = config["cli"]
    assert resolved["model"]["init_args"]["loss"] == "ml"
    assert resolved["data"]["class_path"] == "lightning_seg.data.SyntheticDataModule"
    assert resolved["trainer"]["max_steps"] == 6
    assert resolved["seed_everything"] == 0
    # Same as the config.yaml the CLI saved in the run directory.
    (saved,) = wandb_run["root"].glob("logs/version_*/config.yaml")
    assert yaml.safe_load(saved.read_text()) == resolved
    assert {k: config[k] for k in ("dataset", "model", "loss", "fraction", "fold", "seed")} == {
        "dataset": "synthetic",
        "model": "unet_base_channels=8_depth=3",
        "loss": "ml",
        "fraction": 1.0,
        "fold": 0,
        "seed": 0,
    }
    # The run keys win over Lightning's hyperparameter logging, which also has `model` and `seed`.
    assert config["num_classes"] == 4  # the module's hyperparameters are there too
    # the same keys, fingerprint and cell as the run's own record
    record = json.loads((wandb_run["root"] / Records.RUN).read_text())
    assert {k: config[k] for k in record["keys"]} == record["keys"]
    assert (config["fingerprint"], config["cell"]) == (record["fingerprint"], record["cell"])


def test_run_name_and_group_derive_from_the_run_keys(wandb_run):
    run = wandb_run["run"]
    assert run.display_name == "ml-fold0-seed0"
    assert run.run_group == "synthetic/unet_base_channels=8_depth=3/frac1"


def test_prediction_overlays_are_logged_as_images_and_png(wandb_run):
    images = wandb_run["images"]
    assert images, "no image logged to W&B"
    assert len(images) == 2  # one set per validation
    assert images[0]["count"] == 4 and images[0]["height"] == 32 and images[0]["width"] == 3 * 32 + 4
    assert "image | ground truth | prediction" in images[0]["captions"][0]
    media = list((wandb_run["dir"] / "files" / "media" / "images").rglob("*.png"))
    assert len(media) >= 4
    pngs = sorted((wandb_run["root"] / "overlays").glob("step*.png"))
    assert [p.name for p in pngs] == ["step000003.png", "step000006.png"]  # SMALL_RUN: every 3 of 6 steps
    with Image.open(pngs[-1]) as im:
        assert im.size == (3 * 32 + 4, 4 * 32 + 3 * 2)
        pixels = np.asarray(im.convert("RGB"))
    # The ground-truth panel uses the palette only.
    gt = pixels[:32, 34:66].reshape(-1, 3)
    assert {tuple(c) for c in gt} <= {tuple(c) for c in PALETTE[:4]}


def test_user_given_name_and_group_are_kept(tmp_path):
    args = [
        *(
            arg
            for name in ("base.yaml", "data/synthetic.yaml", "loggers/wandb.yaml")
            for arg in ("--config", str(CONFIGS / name))
        ),
        "--trainer.logger.init_args.name=mine",
        "--trainer.logger.init_args.group=my-group",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = build_cli(args, run=False)
    (logger,) = [lg for lg in cli.trainer.loggers if isinstance(lg, WandbLogger)]
    assert logger._wandb_init["name"] == "mine" and logger._wandb_init["group"] == "my-group"


def test_run_names_and_groups():
    keys = RunKeys("chase", "smp.Unet", "additive_lam=0.3", 0.125, 2, 7)
    assert keys.name == "additive_lam=0.3-fold2-seed7"
    assert keys.group == group_name("chase", "smp.Unet", 0.125) == "chase/smp.Unet/frac0.125"


def test_overlay_strip_layout_and_palette():
    image = np.linspace(0, 1, 2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    target = np.array([[0, 1, 2, 255]] * 4)
    pred = np.array([[3, 2, 1, 0]] * 4)
    strip = overlay_strip(image, target, pred, ignore_index=255)
    assert strip.shape == (4, 3 * 4 + 4, 3) and strip.dtype == np.uint8
    assert (strip[0, 6:10] == colourise(target)[0]).all()
    assert tuple(strip[0, 9]) == (255, 255, 255)  # ignored pixel
    assert (strip[0, 12:] == PALETTE[[3, 2, 1, 0]]).all()
    with pytest.raises(ValueError):
        PredictionOverlays(num_images=0)


def test_the_record_reader_fails_on_a_cut_off_or_damaged_file(wandb_run, tmp_path):
    (wandb_file,) = wandb_run["dir"].glob("run-*.wandb")
    data = wandb_file.read_bytes()
    cut, damaged = tmp_path / "cut.wandb", tmp_path / "damaged.wandb"
    cut.write_bytes(data[:-3])
    damaged.write_bytes(data[:-3] + bytes([data[-3] ^ 0xFF]) + data[-2:])
    with pytest.raises(AssertionError, match="ends past the end of the file"):
        list(read_records(cut))
    with pytest.raises(AssertionError, match="checksum"):
        list(read_records(damaged))
