"""A data-parallel fit through the CLI: ``--trainer.strategy=ddp --trainer.devices=2 --trainer.accelerator=cpu``.

The run must finish, log the loss's parts at every training step, log the *global* ones (those of the batch of
both processes, which differ from either process's own), and leave the same kinds of records as a one-process
run. A probe callback recomputes, before every training step, CAML on the step's logits with and without the
synchronisation and writes both beside what the loss logged, per process.
"""

from __future__ import annotations

import copy
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_seg.run import Records
from tests.conftest import REPO, compose

FIELDS = ("ce", "dice_loss", "p_bar", "dice_coef", "alpha")
FIT = [
    sys.executable,
    "-m",
    "lightning_seg.cli",
    "fit",
    *compose("base.yaml", "data/synthetic.yaml", "losses/caml.yaml"),
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_model_summary=false",
    "--data.init_args.num_images=24",
    "--data.init_args.image_size=32",
    "--model.init_args.model_kwargs={base_channels: 4}",
]
#: A DDP fit on two CPU processes takes ~20 s of CPU; the limit only guards against a hang.
TIMEOUT = 600


class GlobalPartsProbe(Callback):
    """Before each training step, CAML's parts on the step's logits with the synchronisation on (``global``) and
    off (``local``); after it, the parts the loss logged. One JSON file per process in ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        with torch.no_grad():
            logits = pl_module(batch["image"])
            row = {}
            for key, sync in (("global", True), ("local", False)):
                loss = copy.deepcopy(pl_module.loss)
                loss.sync_stats = sync
                loss(logits, batch["mask"])
                row[key] = {f: float(getattr(loss.parts, f)) for f in FIELDS}
        self.rows.append(row)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        self.rows[-1]["logged"] = {f: float(getattr(pl_module.loss.parts, f)) for f in FIELDS}
        self.rows[-1]["step"] = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))


def fit(root: Path, *extra: str) -> None:
    done = subprocess.run(
        [*FIT, f"--trainer.default_root_dir={root}", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-4000:]


def record_kinds(root: Path) -> set[str]:
    """The run folder's files, with numbers (epochs, versions) replaced by ``N``."""
    return {re.sub(r"\d+", "N", str(p.relative_to(root))) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    probe = json.dumps(
        {"class_path": "tests.test_distributed_fit.GlobalPartsProbe", "init_args": {"out_dir": str(tmp / "probe")}}
    )
    fit(
        tmp / "ddp",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        f"--trainer.callbacks+={probe}",
    )
    fit(tmp / "single", "--trainer.accelerator=cpu", "--trainer.devices=1")
    return {"ddp": tmp / "ddp", "single": tmp / "single", "probe": tmp / "probe"}


def test_ddp_fit_writes_the_same_kinds_of_records_as_one_process(runs):
    kinds = record_kinds(runs["ddp"])
    assert kinds == record_kinds(runs["single"])
    assert {Records.BEST, Records.RUN, "logs/version_N/metrics.csv", "logs/version_N/config.yaml"} <= kinds
    trainer = yaml.safe_load((runs["ddp"] / "logs" / "version_0" / "config.yaml").read_text())["trainer"]
    assert trainer["strategy"] == "ddp" and str(trainer["devices"]) == "2"


def test_ddp_fit_logs_the_global_parts(runs):
    ranks = [json.loads((runs["probe"] / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) >= 2
    differs = False
    for row0, row1 in zip(*ranks, strict=True):
        for row in (row0, row1):
            # What the loss logged is the synchronised value on the step's logits.
            assert row["logged"] == pytest.approx(row["global"], rel=1e-5, abs=1e-6)
        assert row0["global"] == pytest.approx(row1["global"], rel=1e-6, abs=1e-7)
        differs |= row0["local"]["p_bar"] != pytest.approx(row1["local"]["p_bar"], rel=1e-4)
    assert differs, "the two processes' shares must have different p̄ for the test to mean anything"
    with (runs["ddp"] / "logs" / "version_0" / "metrics.csv").open() as f:
        logged = {int(r["step"]): r for r in csv.DictReader(f) if r.get("train/p_bar")}
    assert logged, "train/p_bar, train/dice_coef, train/alpha must be logged at training steps"
    for row in ranks[0]:
        step = row["step"] - 1  # the logger's step is the global step before the optimizer step
        assert step in logged
        for field in FIELDS:
            assert float(logged[step][f"train/{field}"]) == pytest.approx(row["global"][field], rel=1e-5, abs=1e-6)
