"""Output parity of our U-Net / DeepLabV3+ with segmentation_models_pytorch's on the same weights.

The benchmarks compare these pairs as the same network; these tests are what backs that: smp's
randomly initialised weights, copied into ours, give the same logits.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor, nn

from lightning_seg.models import DeepLabV3Plus, UNet

smp = pytest.importorskip("segmentation_models_pytorch")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
K = 5

# The configurations scripts/benchmarks/semantic_models.py times against smp (there on ResNet-50).
UNET_SMP = dict(backbone_source="torchvision", decoder_channels=(256, 128, 64, 32, 16), upsampling="nearest",
                classifier_kernel_size=3)
DEEPLABV3PLUS_SMP = dict(backbone_source="torchvision", output_stride=16, aspp_rates=(12, 24, 36),
                         aspp_separable=True, post_aspp_conv=True, decoder_convs=1, decoder_separable=True,
                         dropout=0.0, align_corners=True, uniform_dilation=True)

# smp prefix -> ours; the modules under each prefix have the same layout.
UNET_PREFIXES = {"encoder.": "backbone.model.", "segmentation_head.0.": "classifier."}
UNET_PREFIXES |= {f"decoder.blocks.{i}.conv{j + 1}.": f"blocks.{i}.convs.{j}." for i in range(5) for j in range(2)}
DEEPLABV3PLUS_PREFIXES = {
    "encoder.": "backbone.model.",
    "decoder.aspp.0.": "aspp.",
    "decoder.aspp.1.": "post_aspp.0.",
    "decoder.aspp.2.": "post_aspp.1.",
    "decoder.block1.": "low_level.",
    "decoder.block2.0.": "decoder.0.0.",
    "decoder.block2.1.": "decoder.0.1.",
    "segmentation_head.0.": "classifier.1.",
}


def convert(state_dict: Mapping[str, Tensor], prefixes: Mapping[str, str]) -> dict[str, Tensor]:
    """smp state dict -> ours, renaming by the longest matching prefix; unknown keys raise."""
    out = {}
    for key, value in state_dict.items():
        old = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
        if old is None:
            raise KeyError(f"no mapping for smp key {key!r}")
        out[prefixes[old] + key[len(old):]] = value
    return out


def randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Random BN statistics and affine parameters: at their defaults (mean 0, var 1, weight 1,
    bias 0) BN is close to the identity, so a swapped or missing BN would go unnoticed."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                m.bias.copy_(0.1 * torch.randn(c, generator=generator))


def check_parity(ref: nn.Module, make_ours, prefixes: Mapping[str, str]) -> None:
    """Copy ``ref``'s weights into ``make_ours()`` and compare logits on a [0, 1] batch."""
    generator = torch.Generator().manual_seed(0)
    randomise_batchnorm(ref, generator)
    ref.eval()
    ours = make_ours().eval()
    fresh = make_ours().eval()
    ours.load_state_dict(convert(ref.state_dict(), prefixes), strict=True)
    images = torch.rand(2, 3, 64, 96, generator=generator)
    with torch.no_grad():
        expected = ref((images - MEAN) / STD)
        out = ours(images)
        other = fresh(images)
    assert out.shape == expected.shape == (2, K, 64, 96)
    scale = expected.abs().max().item()
    assert scale > 1e-2
    # Not bitwise for DeepLabV3+: smp broadcasts the ASPP image pooling with a bilinear
    # resize, which rounds by an ulp; ours expands the pooled value exactly.
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (other - expected).abs().max().item() > 1e-2 * scale


def test_unet_matches_smp_unet():
    torch.manual_seed(0)
    ref = smp.Unet("resnet18", encoder_weights=None, classes=K)
    check_parity(ref, lambda: UNet(K, backbone="resnet18", **UNET_SMP), UNET_PREFIXES)


def test_deeplabv3plus_matches_smp_deeplabv3plus():
    torch.manual_seed(0)
    # Our torchvision ResNet-18/34 cannot be dilated, and ResNet-50 is what the benchmark runs.
    ref = smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=K, decoder_channels=64)
    check_parity(ref, lambda: DeepLabV3Plus(K, backbone="resnet50", aspp_channels=64, **DEEPLABV3PLUS_SMP),
                 DEEPLABV3PLUS_PREFIXES)


@pytest.mark.parametrize("option", ["post_aspp_conv", "align_corners", "uniform_dilation"])
def test_deeplabv3plus_parity_needs_each_option(option):
    """Each option is needed: without it the same weights give different logits."""
    torch.manual_seed(0)
    ref = smp.DeepLabV3Plus("resnet50", encoder_weights=None, classes=K, decoder_channels=64).eval()
    randomise_batchnorm(ref, torch.Generator().manual_seed(0))
    ours = DeepLabV3Plus(K, backbone="resnet50", aspp_channels=64, **{**DEEPLABV3PLUS_SMP, option: False}).eval()
    state = convert(ref.state_dict(), DEEPLABV3PLUS_PREFIXES)
    if option == "post_aspp_conv":
        state = {k: v for k, v in state.items() if not k.startswith("post_aspp.")}
    ours.load_state_dict(state, strict=True)
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref((images - MEAN) / STD)
        diff = (ours(images) - expected).abs().max().item()
    assert diff > 1e-2 * expected.abs().max().item()


def test_unet_classifier_kernel_size():
    assert UNet(K, backbone="resnet18", backbone_source="torchvision").classifier.kernel_size == (1, 1)
    with pytest.raises(ValueError, match="classifier_kernel_size"):
        UNet(K, backbone="resnet18", backbone_source="torchvision", classifier_kernel_size=2)


def test_uniform_dilation_sets_the_stage_rate_everywhere():
    model = DeepLabV3Plus(K, backbone="resnet50", backbone_source="torchvision", output_stride=8,
                          aspp_channels=16, low_level_channels=8, uniform_dilation=True)
    tv = model.backbone.model
    for stage, rate in (("layer2", 1), ("layer3", 2), ("layer4", 4)):
        convs = [m for m in getattr(tv, stage).modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert all(m.dilation == (rate, rate) and m.padding == (rate, rate) for m in convs), stage
