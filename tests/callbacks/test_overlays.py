"""Prediction overlays: drawn at every n-th validation of a fit, named by the step, the count kept on resume."""

import numpy as np
import pytest
from PIL import Image

from lightning_seg.callbacks import PredictionOverlays
from lightning_seg.callbacks.overlays import PALETTE

from .conftest import tiny_data, tiny_module, tiny_trainer


def fit(root, overlays, **kwargs):
    # an epoch of 2 steps, a validation every 3 steps (across epoch ends), so steps and epochs differ
    options = dict(max_epochs=None, max_steps=12, val_check_interval=3, check_val_every_n_epoch=None)
    trainer = tiny_trainer(root, [overlays], **{**options, **kwargs})
    trainer.fit(tiny_module(loss="ce"), datamodule=tiny_data())
    return sorted(p.name for p in (root / "overlays").glob("*.png"))


@pytest.mark.parametrize(("every", "steps"), [(1, [3, 6, 9, 12]), (2, [3, 9]), (3, [3, 12]), (5, [3])])
def test_every_n_validations_named_by_step(tmp_path, every, steps):
    overlays = PredictionOverlays(num_images=3, every_n_validations=every)  # more than the one batch of 2
    assert fit(tmp_path, overlays) == [f"step{step:06d}.png" for step in steps]
    assert overlays.state_dict() == {"validations": 4}
    with Image.open(tmp_path / "overlays" / f"step{steps[0]:06d}.png") as im:
        assert im.size == (3 * 16 + 4, 2 * 16 + 2)  # 2 strips of image | truth | prediction
        truth = np.asarray(im.convert("RGB"))[:16, 18:34].reshape(-1, 3)
    assert {tuple(c) for c in truth} <= {tuple(c) for c in PALETTE[:4]}


def test_a_resumed_count_goes_on(tmp_path):
    overlays = PredictionOverlays(num_images=1, every_n_validations=2)
    overlays.load_state_dict({"validations": 1})  # as restored from a checkpoint written after one validation
    assert fit(tmp_path, overlays) == ["step000006.png", "step000012.png"]


def test_nothing_in_the_sanity_check_or_a_bare_validate(tmp_path):
    assert fit(tmp_path, PredictionOverlays(num_images=1), num_sanity_val_steps=1, max_steps=2) == []
    overlays = PredictionOverlays(num_images=1)
    tiny_trainer(tmp_path / "validate", [overlays]).validate(tiny_module(loss="ce"), datamodule=tiny_data())
    assert not (tmp_path / "validate" / "overlays").exists() and overlays.state_dict() == {"validations": 0}


@pytest.mark.parametrize(("num_images", "every"), [(0, 1), (1, 0)])
def test_invalid_options(num_images, every):
    with pytest.raises(ValueError, match=f"^PredictionOverlays: .* got {num_images} and {every}$"):
        PredictionOverlays(num_images=num_images, every_n_validations=every)
