"""Checkpoint cost per run: writes, bytes written and disk left behind, for the paper's U-Net (31.0M parameters).

Trains the same short run twice on the synthetic data, on the CPU (the cost is bytes and counts, not speed):

- ``before``: the former checkpointing of ``configs/base.yaml``, Lightning's ``ModelCheckpoint(monitor="val/miou",
  mode="max", save_last=True)``: the full state (weights + Adam) as ``last.ckpt`` every epoch and the best
  checkpoint, also with the full state, on each improvement; both stay after the run.
- ``now``: :class:`lightning_seg.callbacks.RunCheckpoint` as ``configs/base.yaml`` sets it (best weights only,
  at most once per validation; the resumable ``last.ckpt`` every ``--every-minutes``), then
  :meth:`~lightning_seg.callbacks.RunCheckpoint.finish` as the CLI calls it when the run has recorded its result.

Every ``trainer.save_checkpoint`` call is counted with the size of the file it wrote; "disk after" is the size of
everything left in the run's checkpoint folder. Prints one Markdown row per scheme (``--output FILE`` appends them).

    .venv/bin/python benchmarks/checkpoints.py --epochs 4 --steps 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))  # models.py beside it, also when loaded by file path

from models import add_report_arguments, report_table  # noqa: E402

from lightning_seg import SegmentationModule  # noqa: E402
from lightning_seg.callbacks import RunCheckpoint  # noqa: E402
from lightning_seg.data import SyntheticDataModule  # noqa: E402

HEADER = (
    "| date | machine | scheme | network | epochs × steps | validations | writes (best + last) | written (MB) "
    "| disk after the run (MB) | files after the run |\n|---|---|---|---|---|---:|---|---:|---:|---|"
)


class CountedTrainer(L.Trainer):
    """A Trainer that records the size of every checkpoint it writes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.written: list[tuple[str, int]] = []

    def save_checkpoint(self, filepath, weights_only: bool = False, storage_options=None) -> None:
        super().save_checkpoint(filepath, weights_only, storage_options)
        self.written.append((Path(filepath).name.lstrip(".").removesuffix(".tmp"), Path(filepath).stat().st_size))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run(scheme: str, args: argparse.Namespace, root: Path) -> dict:
    L.seed_everything(0, verbose=False)
    data = SyntheticDataModule(num_images=20, image_size=args.size, batch_size=args.batch)
    module = SegmentationModule(
        model="unet",
        model_kwargs={"base_channels": args.base_channels},
        num_classes=len(data.class_names),
        in_channels=data.in_channels,
        class_names=data.class_names,
        loss="caml",
    )
    if scheme == "before":
        checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/miou", mode="max", save_last=True)
    else:
        checkpoint = RunCheckpoint(every_minutes=args.every_minutes)
    trainer = CountedTrainer(
        accelerator="cpu",
        max_epochs=args.epochs,
        limit_train_batches=args.steps,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=[checkpoint],
    )
    trainer.fit(module, datamodule=data)
    if scheme == "now":
        checkpoint.finish()
    files = sorted((root / "checkpoints").iterdir())
    best = sum(1 for name, _ in trainer.written if name.startswith(("best", "epoch")))
    return {
        "scheme": scheme,
        "params": sum(p.numel() for p in module.model.parameters()),
        "writes": (best, len(trainer.written) - best),
        "written": sum(size for _, size in trainer.written),
        "disk": sum(f.stat().st_size for f in files),
        "files": [f.name for f in files],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="training steps per epoch; one validation per epoch")
    parser.add_argument("--size", type=int, default=32, help="image side (a multiple of 16)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--base-channels", type=int, default=64, help="U-Net width (64: the paper's, 31.0M parameters)")
    parser.add_argument("--every-minutes", type=float, default=5.0, help="RunCheckpoint's interval for last.ckpt")
    add_report_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads"
    rows = []
    for scheme in ("before", "now"):
        with tempfile.TemporaryDirectory() as tmp:
            result = run(scheme, args, Path(tmp))
        best, last = result["writes"]
        rows.append(
            f"| {args.date} | {machine} | {scheme} | unet ({result['params'] / 1e6:.1f}M parameters) "
            f"| {args.epochs} × {args.steps} | {args.epochs} | {best} + {last} | {result['written'] / 1e6:.0f} "
            f"| {result['disk'] / 1e6:.0f} | {', '.join(result['files'])} |"
        )
    report_table(HEADER, rows, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
