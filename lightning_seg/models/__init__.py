"""Segmentation models by name; see :mod:`.registry`."""

from . import unet  # noqa: F401  (registers "unet" and "tiny")
from . import convformer_unet, transunet  # noqa: F401  (register "convformer_unet" and "transunet")
from .registry import MODELS, build_model, register_model
from .unet import UNet

__all__ = ["MODELS", "UNet", "build_model", "register_model"]
