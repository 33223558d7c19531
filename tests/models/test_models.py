"""Tests of the model registry and its architectures: output shapes, input-size checks, parameter counts of
the default sizes against published figures, a short overfit run, and that nothing is ever downloaded.

Full-size models are counted on the meta device (no memory, no initialisation); forwards and training use
small variants, except one 64-pixel forward per default model.
"""

from __future__ import annotations

import functools
import socket

import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

from lightning_seg.models import MODELS, build_model
from lightning_seg.models.convformer_unet import convformer_encoder
from lightning_seg.models.transunet import TransUNet

IN_CHANNELS = 1  # greyscale, the project's usual case and the harder one for ImageNet-style models
NUM_CLASSES = 2

#: A fast variant of each model for CPU forwards and training.
SMALL: dict[str, dict] = {
    "unet": {"base_channels": 4},
    "transunet": {"variant": "tiny"},
    "convformer_unet": {"variant": "tiny"},
    "tiny": {},
    "smp.Unet": {"encoder_name": "resnet18"},
}
#: Models that reject inputs whose sides are not a multiple of their total down-sampling factor.
STRIDE = {"unet": 16, "transunet": 16, "convformer_unet": 32}


pytestmark = pytest.mark.usefixtures("single_thread")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, in_channels: int = IN_CHANNELS, num_classes: int = NUM_CLASSES, **kwargs) -> nn.Module:
    """Build a model without allocating or initialising its weights."""
    with torch.device("meta"):
        return build_model(name, in_channels, num_classes, **kwargs)


@functools.cache
def small_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, IN_CHANNELS, NUM_CLASSES, **SMALL[name]).eval()


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every attempt to open a network connection fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model tried to use the network (download pretrained weights?)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("name", list(SMALL))
def test_output_shape(name: str, size: int) -> None:
    model = small_model(name)
    batch = 2 if size == 64 else 1
    with torch.no_grad():
        out = model(torch.randn(batch, IN_CHANNELS, size, size))
    assert out.shape == (batch, NUM_CLASSES, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["transunet", "convformer_unet"])
def test_rgb_input_and_non_square(name: str) -> None:
    model = build_model(name, 3, 5, **SMALL[name]).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 5, 64, 96)


@pytest.mark.parametrize("name", ["unet", "transunet", "convformer_unet"])
def test_default_size_forward_64px(name: str) -> None:
    """One forward of the full-size default model (CPU, 64×64, batch 1)."""
    torch.manual_seed(0)
    model = build_model(name, IN_CHANNELS, NUM_CLASSES).eval()
    with torch.no_grad():
        out = model(torch.randn(1, IN_CHANNELS, 64, 64))
    assert out.shape == (1, NUM_CLASSES, 64, 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [65, 100, 48])
@pytest.mark.parametrize("name", list(STRIDE))
def test_bad_input_size_is_a_clear_value_error(name: str, size: int) -> None:
    model = small_model(name)
    x = torch.randn(1, IN_CHANNELS, size, size)
    if size % STRIDE[name] == 0:  # 48 is fine for the stride-16 models
        with torch.no_grad():
            assert model(x).shape[-2:] == (size, size)
        return
    with pytest.raises(ValueError, match=rf"divisible by {STRIDE[name]}.*\({size}, {size}\)"):
        model(x)


@pytest.mark.parametrize("name", ["tiny", "smp.Unet"])
def test_models_without_a_size_constraint_keep_any_size(name: str) -> None:
    """``tiny`` is fully convolutional and smp ≥ 0.5's U-Net interpolates in its decoder: any size works."""
    with torch.no_grad():
        out = small_model(name)(torch.randn(1, IN_CHANNELS, 65, 100))
    assert out.shape == (1, NUM_CLASSES, 65, 100)


def test_transunet_position_embedding_follows_input_size() -> None:
    torch.manual_seed(0)
    model = build_model("transunet", IN_CHANNELS, NUM_CLASSES, variant="tiny", img_size=64).eval()
    assert model.pos_embed.shape == (1, 4 * 4, model.config.hidden_size)
    with torch.no_grad():
        assert model(torch.randn(1, IN_CHANNELS, 128, 80)).shape == (1, NUM_CLASSES, 128, 80)
    with pytest.raises(ValueError, match="img_size"):
        build_model("transunet", IN_CHANNELS, NUM_CLASSES, variant="tiny", img_size=100)
    with pytest.raises(ValueError, match="unknown TransUNet variant 'huge'.*base"):
        build_model("transunet", IN_CHANNELS, NUM_CLASSES, variant="huge")


def test_variant_overrides() -> None:
    model = build_on_meta(
        "transunet", variant="tiny", vit_depth=3, hidden_size=96, num_heads=6, decoder_channels=(8, 8, 8, 8)
    )
    assert len(model.blocks) == 3 and model.config.hidden_size == 96
    assert [b.conv2[0].out_channels for b in model.decoder] == [8, 8, 8, 8]
    model = build_on_meta("convformer_unet", variant="tiny", encoder_depths=(1, 1, 2, 1))
    assert len(model.encoder.stages_2.blocks) == 2
    with pytest.raises(ValueError, match="unknown ConvFormer U-Net variant"):
        build_model("convformer_unet", IN_CHANNELS, NUM_CLASSES, variant="nope")


# ------------------------------------------------------------------------------------------ parameter counts


def test_unet_parameter_count() -> None:
    # Ronneberger et al. 2015 U-Net (64 base channels, 4 levels, transposed-conv up, + BN): ~31.0M parameters,
    # the figure widely quoted for reimplementations such as milesial/Pytorch-UNet (bilinear=False).
    # Exact count for 1 input channel and 2 classes: 31,036,546; the published figure is given to 0.1M, so
    # it is met within half a unit of its last digit.
    count = n_params(build_on_meta("unet"))
    assert count == 31_036_546
    assert abs(count - 31.0e6) <= 0.05e6


def _reference_transunet_count(in_channels=3, num_classes=9, img_size=224) -> int:
    """Parameter count of R50-ViT-B/16 TransUNet, layer by layer as in the authors' code
    (github.com/Beckschen/TransUNet, networks/vit_seg_modeling.py and vit_seg_modeling_resnet_skip.py)."""

    def bottleneck(cin, cout, cmid, proj):  # 3 bias-free StdConvs + 3 GroupNorms (+ projection conv + GN)
        n = cin * cmid + 9 * cmid * cmid + cmid * cout + 2 * (cmid + cmid + cout)
        return n + (cin * cout + 2 * cout if proj else 0)

    width, hidden, mlp, depth = 64, 768, 3072, 12
    resnet = in_channels * width * 49 + 2 * width  # root conv + GN
    for units, cin, cout, cmid in [
        (3, width, 4 * width, width),
        (4, 4 * width, 8 * width, 2 * width),
        (9, 8 * width, 16 * width, 4 * width),
    ]:
        resnet += bottleneck(cin, cout, cmid, True) + (units - 1) * bottleneck(cout, cout, cmid, False)
    block = 2 * 2 * hidden + 4 * (hidden * hidden + hidden) + (hidden * mlp + mlp) + (mlp * hidden + hidden)
    transformer = (16 * width * hidden + hidden) + (img_size // 16) ** 2 * hidden + depth * block + 2 * hidden

    def conv_bn(cin, cout):  # Conv2dReLU: bias-free 3×3 conv + BatchNorm
        return 9 * cin * cout + 2 * cout

    decoder = conv_bn(hidden, 512)
    for cin, skip, cout in [(512, 512, 256), (256, 256, 128), (128, 64, 64), (64, 0, 16)]:
        decoder += conv_bn(cin + skip, cout) + conv_bn(cout, cout)
    head = 9 * 16 * num_classes + num_classes
    return resnet + transformer + decoder + head


def test_transunet_parameter_count() -> None:
    # TransUNet R50-ViT-B/16 as evaluated on Synapse (RGB-replicated 224×224 input, 9 classes): 105.28M
    # parameters, the figure reported for it in the literature (e.g. the comparison table of Swin-Unet, Cao et
    # al. 2021, arXiv:2105.05537, which others copy). Our model reproduces the reference code's layers, so
    # the count must match a layer-by-layer count of that code *exactly*, and the published figure to within
    # its rounding (0.01M given → ±0.005M).
    count = n_params(build_on_meta("transunet", in_channels=3, num_classes=9, img_size=224))
    assert count == _reference_transunet_count() == 105_277_081
    assert abs(count - 105.28e6) <= 0.005e6
    # The project default (256×256 greyscale, 2 classes) differs only by the position embedding
    # ((16² - 14²) × 768), the stem's input channels and the head's classes.
    default = n_params(build_on_meta("transunet"))
    assert default == _reference_transunet_count(in_channels=1, num_classes=2, img_size=256) == 105_315_874
    # and the 1/16-resolution transformer holds most of the parameters (85.99M with the embedding)
    assert n_params(build_on_meta("transunet").blocks) == 12 * 7_087_872


def test_convformer_unet_parameter_count() -> None:
    # MetaFormer baselines (Yu et al., TPAMI 2024, arXiv:2210.13452), Table: ConvFormer-S18 has 26.8M parameters
    # as an ImageNet classifier; timm's convformer_s18 reproduces it (26,774,448).
    with torch.device("meta"):
        classifier = timm.create_model("convformer_s18", pretrained=False)
        encoder_rgb = convformer_encoder("convformer_s18", in_channels=3)
    assert abs(n_params(classifier) - 26.8e6) <= 0.05e6
    # Our encoder is that network without its classification head (pool, norm and MLP head: 3,104,744).
    assert n_params(encoder_rgb) == n_params(classifier) - n_params(classifier.head) == 23_669_704
    model = build_on_meta("convformer_unet", in_channels=3)
    assert n_params(model.encoder) == n_params(encoder_rgb)
    # Greyscale input only changes the 7×7 stride-4 stem convolution (64 filters).
    model = build_on_meta("convformer_unet")
    assert n_params(model.encoder) == 23_669_704 - 2 * 49 * 64
    # Whole model: the same network as smp's own U-Net on the timm encoder.
    import segmentation_models_pytorch as smp

    with torch.device("meta"):
        reference = smp.Unet("tu-convformer_s18", encoder_weights=None, in_channels=IN_CHANNELS, classes=NUM_CLASSES)
    assert n_params(model) == n_params(reference) == 26_944_298


def test_small_variants_are_small() -> None:
    for name in ("unet", "transunet", "convformer_unet"):
        assert n_params(small_model(name)) < 0.5e6, name


# ------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", ["unet", "transunet", "convformer_unet", "tiny"])
def test_a_few_adam_steps_reduce_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, IN_CHANNELS, NUM_CLASSES, **SMALL[name]).train()
    # a fixed batch: bright discs on noise, the target is the disc
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centres = torch.tensor([[20.0, 30.0], [40.0, 36.0]])
    target = torch.stack([((yy - cy) ** 2 + (xx - cx) ** 2 < 15.0**2).long() for cy, cx in centres])
    images = (target.float() + 0.3 * torch.randn(2, 64, 64)).unsqueeze(1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(images), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert min(losses[-3:]) < 0.9 * losses[0], losses


# -------------------------------------------------------------------------------------- registry, downloads


def test_all_models_are_registered() -> None:
    assert {"unet", "tiny", "transunet", "convformer_unet"} <= set(MODELS)


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'") as info:
        build_model("nope", IN_CHANNELS, NUM_CLASSES)
    for name in ("unet", "tiny", "transunet", "convformer_unet", "smp."):
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["smp.Unet", "transunet", "convformer_unet"])
def test_building_never_downloads(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    no_network(monkeypatch)
    kwargs = SMALL[name]
    model = build_model(name, IN_CHANNELS, NUM_CLASSES, **kwargs)
    if name == "smp.Unet":
        # the registry defaults encoder_weights to None: the resnet18 encoder keeps its random init
        assert model.encoder.conv1.weight.shape == (64, IN_CHANNELS, 7, 7)


def test_convformer_unet_refuses_pretrained() -> None:
    with pytest.raises(ValueError, match="from scratch"):
        build_model("convformer_unet", IN_CHANNELS, NUM_CLASSES, pretrained=True)


def test_transunet_is_the_paper_topology() -> None:
    model = build_on_meta("transunet")
    assert isinstance(model, TransUNet)
    assert [len(s.blocks) for s in model.resnet.stages] == [3, 4, 9]
    assert model.patch_embed.kernel_size == (1, 1) and model.patch_embed.out_channels == 768
    assert len(model.blocks) == 12 and model.blocks[0].attn.num_heads == 12
    assert model.blocks[0].mlp.fc1.out_features == 3072
    assert [b.conv2[0].out_channels for b in model.decoder] == [256, 128, 64, 16]
    assert [b.conv1[0].in_channels for b in model.decoder] == [512 + 512, 256 + 256, 128 + 64, 64]
