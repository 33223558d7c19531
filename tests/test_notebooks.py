"""Every notebook runs top to bottom, in a fresh kernel of this interpreter, in an empty working directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from lightning_seg.run import Records, find_run_folders

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "lightning-seg-test"


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernel spec running ``sys.executable``, in a temporary JUPYTER_PATH (nothing installed for the user)."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == ["gradients", "quickstart", "results"]


@pytest.mark.parametrize("name", ["quickstart", "gradients", "results"])
def test_notebook_runs(name, kernel, tmp_path):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    workdir = tmp_path / "work"
    workdir.mkdir()
    # Raises CellExecutionError on the first cell that errors. The limit is per cell: the results notebook's grid
    # cell took 135 s on a loaded 2-core machine.
    NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(workdir)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
    text = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "colab" in nb.cells[0].source.lower()
    assert "google.colab" in nb.cells[1].source
    model = "unet_base_channels=8_depth=3"  # the small U-Net of configs/data/synthetic.yaml
    if name == "quickstart":
        folders = {f.identity().keys.loss: f for f in find_run_folders(workdir / "runs")}
        assert sorted(folders) == ["caml", "ce"]
        assert all(f.path.parent == workdir / "runs/synthetic" / model / loss for loss, f in folders.items())
        assert all(f.best_path().is_file() and f.read(Records.TEST_METRICS) for f in folders.values())
        assert "mIoU" in text
    elif name == "gradients":
        assert "all checks passed" in text
        assert (workdir / "figures/gradients.png").is_file()
    else:
        summary = (workdir / "runs/grids/synthetic/summary.csv").read_text()
        assert f"synthetic,{model},1.0,caml,miou,3," in summary and f"synthetic,{model},1.0,ce,miou,3," in summary
        assert f"| {model} | 1 | caml | 3 |" in (workdir / "runs/grids/synthetic/results.md").read_text()
        assert (workdir / f"plots/synthetic_{model}_frac1.png").is_file()
        assert (workdir / f"plots/synthetic_{model}_frac1_test.png").is_file()  # per-image scores per loss
        assert f"synthetic,{model},1.0,caml,image_dice_curve,3," in summary
        assert (workdir / "runs/grids/synthetic/paired_images.csv").is_file()
        assert "ECE (top label):" in text
    images = [
        o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if "image/png" in o.get("data", {})
    ]
    assert images, "every notebook shows a figure"
