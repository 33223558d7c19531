"""TransUNet (Chen et al., 2021, arXiv:2102.04306), built from scratch out of timm parts.

Architecture of the paper's main model, R50-ViT-B/16 (``variant="base"``), as in the authors' code
(github.com/Beckschen/TransUNet, ``networks/vit_seg_modeling*.py``):

* **CNN trunk**: the ResNet-50 "v2" trunk of the R50+ViT hybrid — 7×7 stride-2 stem and max-pool, then
  three stages of (3, 4, 9) bottlenecks with output widths (256, 512, 1024), weight-standardised
  convolutions and GroupNorm(32). This is timm's :class:`~timm.models.resnetv2.ResNetV2` with
  ``preact=False`` (the non-pre-activation bottleneck timm and TransUNet both use for the hybrid ViT),
  with the fourth stage dropped. The trunk output is at 1/16 resolution.
* **Transformer**: a 1×1 convolution ("patch size 1" on the 1/16 map) embeds each position into
  ``hidden_size`` = 768, a learnt position embedding is added (no class token), then 12 pre-norm
  transformer layers (:class:`timm.models.vision_transformer.Block`: 12 heads, MLP 3072, GELU) and a
  final LayerNorm.
* **CUP** (cascaded upsampler): a 3×3 conv to 512 channels, then four blocks of
  (2× bilinear upsampling → concat skip → two 3×3 conv+BN+ReLU) with widths (256, 128, 64, 16); the
  first three take the CNN features at 1/8, 1/4 and 1/2 resolution as skips (``n_skip=3``).
* **Head**: a 3×3 convolution to ``num_classes`` logits at full resolution.

Deliberate differences from the reference code, none of which changes the parameter count:

* ``in_channels`` is the stem convolution's input width, so greyscale images go in as they are (the
  reference code repeats a 1-channel input three times instead). With ``in_channels=3`` the count equals
  the paper model's.
* The stem max-pool uses padding 1 (PyTorch's usual ResNet stem), so every feature map is exactly
  1/2, 1/4, 1/8, 1/16 of an input whose sides are divisible by 16; the reference pools without padding
  and zero-pads the skips back to size.
* The projection shortcut's GroupNorm uses 32 groups (timm) instead of one group per channel, and timm's
  transformer block applies the dropout rate to the attention output projection as well as to the MLP.
* The position embedding is created for ``img_size`` (default 256, i.e. a 16×16 token grid) and is
  resampled bicubically (timm's :func:`~timm.layers.resample_abs_pos_embed`) when an input of another
  size comes in, so any input with sides divisible by 16 works. The parameter count depends on
  ``img_size`` through the position embedding only: (img_size/16)² × hidden_size values.

Nothing is ever downloaded: every timm part is constructed directly, never through a pretrained entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import GroupNormAct, StdConv2d, resample_abs_pos_embed, trunc_normal_
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from .registry import register_model

#: Input sides must be a multiple of this: the CNN trunk reduces the resolution 16-fold.
PATCH_STRIDE = 16


@dataclass(frozen=True)
class TransUNetConfig:
    """Hyper-parameters of a TransUNet; the presets are in :data:`VARIANTS`."""

    resnet_layers: tuple[int, ...] = (3, 4, 9)
    resnet_width: int = 64  # stem width; the three stages are 4×, 8× and 16× this wide
    gn_groups: int = 32
    hidden_size: int = 768
    vit_depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.1
    attn_dropout: float = 0.0
    head_channels: int = 512
    decoder_channels: tuple[int, ...] = (256, 128, 64, 16)
    n_skip: int = 3


#: Named presets. ``base`` is the paper's R50-ViT-B/16, ``large`` the R50-ViT-L/16 of the reference code,
#: ``tiny`` a few-thousand-parameter version with the same topology, for tests and CPU smoke runs.
VARIANTS: dict[str, TransUNetConfig] = {
    "base": TransUNetConfig(),
    "large": TransUNetConfig(hidden_size=1024, vit_depth=24, num_heads=16, mlp_dim=4096),
    "tiny": TransUNetConfig(
        resnet_layers=(1, 1, 1),
        resnet_width=16,
        gn_groups=8,
        hidden_size=64,
        vit_depth=2,
        num_heads=4,
        mlp_dim=128,
        dropout=0.0,
        head_channels=64,
        decoder_channels=(32, 16, 16, 8),
    ),
}


class Conv2dBNReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class CUPBlock(nn.Module):
    """One cascaded-upsampler block: 2× bilinear upsampling, optional skip concat, two conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0) -> None:
        super().__init__()
        self.conv1 = Conv2dBNReLU(in_channels + skip_channels, out_channels)
        self.conv2 = Conv2dBNReLU(out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        # nn.UpsamplingBilinear2d in the reference code, i.e. align_corners=True
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class TransUNet(nn.Module):
    """TransUNet mapping ``in_channels``-channel images to ``num_classes`` logit maps of the same size.

    Input height and width must be divisible by 16 (:data:`PATCH_STRIDE`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        config: TransUNetConfig | None = None,
        img_size: int | Sequence[int] = 256,
    ) -> None:
        super().__init__()
        cfg = config or TransUNetConfig()
        self.config = cfg
        if len(cfg.resnet_layers) != 3 or min(cfg.resnet_layers) < 1:
            raise ValueError(f"resnet_layers must be three positive block counts, got {cfg.resnet_layers}")
        if len(cfg.decoder_channels) != 4:
            raise ValueError(f"decoder_channels must have four widths, got {cfg.decoder_channels}")
        if not 0 <= cfg.n_skip <= 3:
            raise ValueError(f"n_skip must be between 0 and 3, got {cfg.n_skip}")
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(img_size) != 2 or any(s <= 0 or s % PATCH_STRIDE for s in img_size):
            raise ValueError(f"img_size must be positive and divisible by {PATCH_STRIDE}, got {img_size}")
        self.img_size = img_size
        self.grid_size = (img_size[0] // PATCH_STRIDE, img_size[1] // PATCH_STRIDE)

        # --- CNN trunk: timm ResNetV2, non-pre-activation bottlenecks (as in the R50+ViT hybrid), 3 stages.
        width = cfg.resnet_width
        stage_widths = (4 * width, 8 * width, 16 * width)
        self.resnet = ResNetV2(
            layers=list(cfg.resnet_layers),
            channels=stage_widths,
            num_classes=0,
            in_chans=in_channels,
            global_pool="",
            stem_chs=width,
            stem_type="",  # 7×7/2 conv + 3×3/2 max-pool with symmetric padding
            preact=False,
            norm_layer=partial(GroupNormAct, num_groups=cfg.gn_groups),
            conv_layer=partial(StdConv2d, eps=1e-5),  # the reference StdConv2d's epsilon
        )
        # ResNetV2 always builds a (parameter-free here) pooling head; the trunk is used up to stage 3 only.
        self.resnet.head = nn.Identity()

        # --- Transformer encoder on the 1/16 feature map ("patch size 1").
        self.patch_embed = nn.Conv2d(stage_widths[-1], cfg.hidden_size, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], cfg.hidden_size))
        self.pos_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.Sequential(
            *(
                Block(
                    dim=cfg.hidden_size,
                    num_heads=cfg.num_heads,
                    mlp_ratio=cfg.mlp_dim / cfg.hidden_size,
                    qkv_bias=True,
                    proj_drop=cfg.dropout,
                    attn_drop=cfg.attn_dropout,
                    norm_layer=partial(nn.LayerNorm, eps=1e-6),
                )
                for _ in range(cfg.vit_depth)
            )
        )
        self.encoder_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-6)

        # --- CUP decoder and segmentation head.
        # Skips, deepest first: 1/8 (8·width), 1/4 (4·width), 1/2 (stem, width); the last block has none.
        skip_channels = [8 * width, 4 * width, width, 0]
        skip_channels = [c if i < cfg.n_skip else 0 for i, c in enumerate(skip_channels)]
        self.conv_more = Conv2dBNReLU(cfg.hidden_size, cfg.head_channels)
        ins = [cfg.head_channels, *cfg.decoder_channels[:-1]]
        self.decoder = nn.ModuleList(
            CUPBlock(i, o, s) for i, o, s in zip(ins, cfg.decoder_channels, skip_channels, strict=True)
        )
        self.segmentation_head = nn.Conv2d(cfg.decoder_channels[-1], num_classes, kernel_size=3, padding=1)

        self._init_transformer()

    def _init_transformer(self) -> None:
        """timm's ViT initialisation for the transformer part (the CNN keeps ResNetV2's own)."""
        trunc_normal_(self.pos_embed, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        if grid == self.grid_size:
            return self.pos_embed
        return resample_abs_pos_embed(
            self.pos_embed, new_size=list(grid), old_size=list(self.grid_size), num_prefix_tokens=0
        )

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height % PATCH_STRIDE or width % PATCH_STRIDE:
            raise ValueError(
                f"TransUNet needs input height and width divisible by {PATCH_STRIDE}, got {(height, width)}"
            )
        stem = self.resnet.stem
        x = stem.norm(stem.conv(x))  # GroupNorm + ReLU: the 1/2-resolution skip
        skips = [x]
        x = stem.pool(x)
        stages = self.resnet.stages
        for stage in stages[:-1]:
            x = stage(x)
            skips.append(x)  # 1/4, 1/8
        x = stages[-1](x)  # 1/16

        x = self.patch_embed(x)
        batch, channels, gh, gw = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self._pos_embed((gh, gw))
        tokens = self.encoder_norm(self.blocks(self.pos_drop(tokens)))
        x = tokens.transpose(1, 2).reshape(batch, channels, gh, gw)

        x = self.conv_more(x)
        skips = skips[::-1]  # 1/8, 1/4, 1/2
        for i, block in enumerate(self.decoder):
            x = block(x, skips[i] if i < self.config.n_skip else None)
        return self.segmentation_head(x)


@register_model("transunet")
def transunet(
    in_channels: int,
    num_classes: int,
    variant: str = "base",
    img_size: int | Sequence[int] = 256,
    *,
    resnet_layers: Sequence[int] | None = None,
    resnet_width: int | None = None,
    gn_groups: int | None = None,
    hidden_size: int | None = None,
    vit_depth: int | None = None,
    num_heads: int | None = None,
    mlp_dim: int | None = None,
    dropout: float | None = None,
    attn_dropout: float | None = None,
    head_channels: int | None = None,
    decoder_channels: Sequence[int] | None = None,
    n_skip: int | None = None,
) -> TransUNet:
    """TransUNet preset ``variant`` (``base`` = R50-ViT-B/16, ``large``, ``tiny``); any other keyword overrides it."""
    try:
        config = VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown TransUNet variant {variant!r}; known: {', '.join(VARIANTS)}") from None
    overrides = {
        "resnet_layers": None if resnet_layers is None else tuple(resnet_layers),
        "resnet_width": resnet_width,
        "gn_groups": gn_groups,
        "hidden_size": hidden_size,
        "vit_depth": vit_depth,
        "num_heads": num_heads,
        "mlp_dim": mlp_dim,
        "dropout": dropout,
        "attn_dropout": attn_dropout,
        "head_channels": head_channels,
        "decoder_channels": None if decoder_channels is None else tuple(decoder_channels),
        "n_skip": n_skip,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    assert set(overrides) == set(asdict(config))  # every field can be overridden
    return TransUNet(in_channels, num_classes, config=config, img_size=img_size)
