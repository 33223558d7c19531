"""Model registry: every architecture is built by name with ``in_channels`` and ``num_classes``.

Names registered here (``unet``, ``tiny``, ...) are this project's models. A name ``smp.<Arch>`` builds
any segmentation-models-pytorch architecture (``smp.Unet``, ``smp.FPN``, ``smp.DeepLabV3Plus``, ...)
from scratch: ``encoder_weights`` defaults to ``None`` so nothing is ever downloaded unless a config
asks for pretrained weights explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

MODELS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[F], F]:
    """Register a model factory ``f(in_channels, num_classes, **kwargs) -> nn.Module`` under ``name``."""

    def decorator(factory: F) -> F:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return decorator


def build_model(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """Build model ``name`` mapping ``in_channels``-channel images to ``num_classes`` logit maps."""
    if name.startswith("smp."):
        return _build_smp(name.removeprefix("smp."), in_channels, num_classes, **kwargs)
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; registered: {', '.join(sorted(MODELS))}, "
            "or 'smp.<Arch>' for a segmentation-models-pytorch architecture"
        ) from None
    return factory(in_channels=in_channels, num_classes=num_classes, **kwargs)


def _build_smp(arch: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    import segmentation_models_pytorch as smp

    kwargs.setdefault("encoder_weights", None)
    try:
        return smp.create_model(arch, in_channels=in_channels, classes=num_classes, **kwargs)
    except KeyError as err:
        raise ValueError(f"unknown segmentation-models-pytorch architecture {arch!r}: {err}") from None
