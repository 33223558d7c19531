"""U-Net with a ConvFormer encoder (MetaFormer baselines; Yu et al., TPAMI 2024, arXiv:2210.13452).

* **Encoder**: a timm ConvFormer (``convformer_s18`` by default; any ``convformer_*`` / MetaFormer name
  via ``encoder``) created with ``pretrained=False, features_only=True``: four stages at strides
  4, 8, 16, 32 (widths 64, 128, 320, 512 for S18). The classification head is not built.
* **Decoder**: segmentation-models-pytorch's :class:`UnetDecoder` (five blocks of nearest-neighbour 2×
  upsampling → concat skip → two 3×3 conv+BN+ReLU, widths 256, 128, 64, 32, 16) and
  :class:`SegmentationHead` (3×3 conv to ``num_classes``).

**Full resolution.** ConvFormer's stem downsamples 4× at once (7×7 stride-4 convolution), so there is no
1/2-resolution feature. We follow segmentation-models-pytorch's own convention for such
"transformer-style" timm encoders (``smp.Unet("tu-convformer_s18")``): the 1/2-resolution skip is an
empty (zero-channel) tensor, so the last two decoder blocks (1/4 → 1/2 → 1/1) are plain upsampling stages
without skips. The model is therefore the same network as ``smp.Unet("tu-convformer_s18",
encoder_weights=None)`` (same parameter count), with a clear ``ValueError`` for bad input sizes and no
download path. The alternative, a stride-2 convolutional skip computed from the input, would add
parameters and a non-ConvFormer component; it is not used.

Input height and width must be divisible by 32 (the encoder's output stride).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from timm.models import FeatureListNet
from timm.models.metaformer import LayerNorm2dNoBias, MetaFormer, SepConv
from torch import Tensor, nn

from .registry import register_model

#: Input sides must be a multiple of this: the deepest ConvFormer stage is at 1/32 resolution.
OUTPUT_STRIDE = 32

#: Named presets. ``s18`` is the default (timm's ``convformer_s18``); ``tiny`` keeps the ConvFormer block
#: (separable-conv token mixer, StarReLU MLP, bias-free LayerNorm) with one block per stage and narrow
#: stages, for tests and CPU smoke runs.
VARIANTS: dict[str, dict] = {
    "s18": dict(
        encoder="convformer_s18", encoder_depths=None, encoder_dims=None, decoder_channels=(256, 128, 64, 32, 16)
    ),
    "tiny": dict(
        encoder="convformer_s18",
        encoder_depths=(1, 1, 1, 1),
        encoder_dims=(16, 32, 48, 64),
        decoder_channels=(32, 16, 16, 8, 8),
    ),
}


def convformer_encoder(
    name: str = "convformer_s18",
    in_channels: int = 3,
    depths: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    **kwargs,
) -> FeatureListNet:
    """A ConvFormer feature extractor returning the four stage outputs (strides 4, 8, 16, 32); never pretrained.

    With ``depths``/``dims`` a custom-size ConvFormer (timm's :class:`MetaFormer` with the ConvFormer token
    mixer and norm) is built instead of the named one, wrapped exactly as ``features_only=True`` does.
    """
    if depths is None and dims is None:
        return timm.create_model(name, pretrained=False, features_only=True, in_chans=in_channels, **kwargs)
    if depths is None or dims is None or len(depths) != 4 or len(dims) != 4:
        raise ValueError(f"a custom ConvFormer needs four depths and four dims, got {depths} and {dims}")
    trunk = MetaFormer(
        in_chans=in_channels,
        num_classes=0,
        depths=tuple(depths),
        dims=tuple(dims),
        token_mixers=SepConv,
        norm_layers=LayerNorm2dNoBias,
        **kwargs,
    )
    return FeatureListNet(trunk, out_indices=(0, 1, 2, 3), flatten_sequential=True)


class ConvFormerUNet(nn.Module):
    """ConvFormer encoder + U-Net decoder, mapping ``in_channels`` images to ``num_classes`` logit maps."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        encoder: str = "convformer_s18",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        encoder_depths: Sequence[int] | None = None,
        encoder_dims: Sequence[int] | None = None,
        **encoder_kwargs,
    ) -> None:
        super().__init__()
        self.encoder = convformer_encoder(encoder, in_channels, encoder_depths, encoder_dims, **encoder_kwargs)
        reductions = list(self.encoder.feature_info.reduction())
        if reductions != [4, 8, 16, 32]:
            raise ValueError(f"encoder {encoder!r} has feature strides {reductions}, expected [4, 8, 16, 32]")
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels must have five widths, got {tuple(decoder_channels)}")
        # smp layout: [input, stride 2, 4, 8, 16, 32]; the stride-2 entry is the empty skip (see module doc).
        encoder_channels = [in_channels, 0, *self.encoder.feature_info.channels()]
        self.decoder = UnetDecoder(
            encoder_channels=encoder_channels, decoder_channels=list(decoder_channels), n_blocks=5
        )
        self.segmentation_head = SegmentationHead(decoder_channels[-1], num_classes, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(
                f"ConvFormerUNet needs input height and width divisible by {OUTPUT_STRIDE}, got {(height, width)}"
            )
        features = self.encoder(x)
        half = x.new_empty((batch, 0, height // 2, width // 2))
        return self.segmentation_head(self.decoder([x, half, *features]))


@register_model("convformer_unet")
def convformer_unet(
    in_channels: int,
    num_classes: int,
    variant: str = "s18",
    *,
    encoder: str | None = None,
    decoder_channels: Sequence[int] | None = None,
    encoder_depths: Sequence[int] | None = None,
    encoder_dims: Sequence[int] | None = None,
    **encoder_kwargs,
) -> ConvFormerUNet:
    """ConvFormer U-Net preset ``variant`` (``s18`` default, ``tiny``); keywords override the preset.

    Extra keywords (e.g. ``drop_path_rate``) go to the timm encoder.
    """
    try:
        preset = dict(VARIANTS[variant])
    except KeyError:
        raise ValueError(f"unknown ConvFormer U-Net variant {variant!r}; known: {', '.join(VARIANTS)}") from None
    if encoder is not None:
        preset["encoder"] = encoder
    if decoder_channels is not None:
        preset["decoder_channels"] = tuple(decoder_channels)
    if encoder_depths is not None:
        preset["encoder_depths"] = tuple(encoder_depths)
    if encoder_dims is not None:
        preset["encoder_dims"] = tuple(encoder_dims)
    if encoder_kwargs.pop("pretrained", False):
        raise ValueError("convformer_unet is always built from scratch; pretrained weights are not supported")
    return ConvFormerUNet(in_channels, num_classes, **preset, **encoder_kwargs)


__all__ = ["ConvFormerUNet", "VARIANTS", "convformer_encoder", "convformer_unet"]
