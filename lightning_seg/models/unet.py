"""The original U-Net (Ronneberger, Fischer & Brox, MICCAI 2015, arXiv:1505.04597), and a tiny test net.

Four down and four up stages of double 3×3 convolutions; max-pool down, 2×2 transposed convolution up,
skip connections by concatenation. Two deliberate departures from the 2015 paper, both standard in its
modern use: padded convolutions (output size = input size) and batch norm after each convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register_model


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` down/up stages and ``base_channels`` doubling at each stage (64 and 4 in the paper).

    Inputs must have height and width divisible by ``2**depth``.
    """

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 64, depth: int = 4) -> None:
        super().__init__()
        if base_channels < 1 or depth < 1:
            raise ValueError(f"base_channels and depth must be ≥ 1, got {base_channels} and {depth}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList([double_conv(in_channels, widths[0])])
        self.encoder.extend(double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"UNet with depth {self.depth} needs height and width divisible by {factor}, got {tuple(x.shape[-2:])}"
            )
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, block in zip(self.up, self.decoder, strict=True):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


@register_model("unet")
def unet(in_channels: int, num_classes: int, base_channels: int = 64, depth: int = 4) -> UNet:
    return UNet(in_channels, num_classes, base_channels=base_channels, depth=depth)


@register_model("tiny")
def tiny(in_channels: int, num_classes: int, channels: int = 8) -> nn.Module:
    """Two 3×3 convolutions: enough to overfit a few images in tests, fast on a CPU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, num_classes, 3, padding=1),
    )
