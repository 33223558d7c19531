"""Segmentation models by name; see :mod:`.registry`."""

from . import unet  # noqa: F401  (registers "unet" and "tiny")
from .registry import MODELS, build_model, register_model
from .unet import UNet

# registration imports of the other architectures (kept out of the sorted block above)
from . import convformer_unet, transunet  # noqa: F401, E402  # isort: skip

__all__ = ["MODELS", "UNet", "build_model", "register_model"]
