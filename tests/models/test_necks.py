"""The one FPN against torchvision's ``FeaturePyramidNetwork`` with copied weights, and its options."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from lightning_seg.models.necks import FPN

CHANNELS = [8, 16, 24, 40]
STRIDES = [4, 8, 16, 32]


def _features(h: int = 61, w: int = 83) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, c, -(-h // s), -(-w // s), generator=g) for c, s in zip(CHANNELS, STRIDES)]


def _copy_conv(dst: nn.Conv2d, src: nn.Conv2d) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


def _copy_from_torchvision(ours: FPN, ref: nn.Module) -> None:
    with torch.no_grad():
        for i in range(len(CHANNELS)):
            _copy_conv(ours.lateral[i][0], ref.inner_blocks[i][0])
            _copy_conv(ours.output[i][0], ref.layer_blocks[i][0])


@pytest.mark.parametrize("extra", ["none", "maxpool", "p6p7_from_c5", "p6p7_from_p5"])
def test_fpn_equals_torchvision_feature_pyramid_network(extra):
    from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

    out = 32
    if extra == "none":
        ours, blocks = FPN(CHANNELS, out), None
    elif extra == "maxpool":
        ours, blocks = FPN(CHANNELS, out, extra_levels="maxpool"), LastLevelMaxPool()
    elif extra == "p6p7_from_c5":
        ours, blocks = FPN(CHANNELS, out, extra_levels="conv", extra_input="input"), LastLevelP6P7(CHANNELS[-1], out)
    else:
        ours, blocks = FPN(CHANNELS, out, extra_levels="conv", extra_input="output"), LastLevelP6P7(out, out)
    ref = FeaturePyramidNetwork(CHANNELS, out, extra_blocks=blocks).eval()
    _copy_from_torchvision(ours, ref)
    if extra.startswith("p6p7"):
        with torch.no_grad():
            _copy_conv(ours.extra[0], ref.extra_blocks.p6)
            _copy_conv(ours.extra[1], ref.extra_blocks.p7)
    feats = _features()
    with torch.no_grad():
        got = ours(feats)
        want = list(ref(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
    assert len(got) == len(want) == len(CHANNELS) + {"none": 0, "maxpool": 1}.get(extra, 2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_fpn_outputs_top_down_feeds_each_output_to_the_next_finer_level():
    """``top_down="outputs"`` against a plain loop written here (MaskFormer's pixel decoder)."""
    torch.manual_seed(0)
    fpn = FPN(CHANNELS, 16, norm="GN", top_down="outputs", coarsest_lateral=False, output_activation=True).eval()
    feats = _features()
    with torch.no_grad():
        got = fpn(feats)
        y = fpn.output[3](feats[3])  # no lateral on the coarsest level
        want = [y]
        for i in (2, 1, 0):
            lateral = fpn.lateral[i](feats[i])
            y = fpn.output[i](lateral + nn.functional.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            want.insert(0, y)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert isinstance(fpn.lateral[3], nn.Identity)
    assert all((o >= 0).all() for o in got)  # ReLU after every output conv


def test_fpn_strides_and_odd_sizes_of_extra_levels():
    fpn = FPN(CHANNELS, 16, extra_levels="conv", in_strides=STRIDES, extra_relu=False)
    outs = fpn(_features(61, 83))
    assert fpn.strides == [4, 8, 16, 32, 64, 128]
    assert [tuple(o.shape[-2:]) for o in outs] == [(-(-61 // s), -(-83 // s)) for s in fpn.strides]


def test_fpn_rejects_bad_configuration():
    with pytest.raises(ValueError, match="coarsest_lateral"):
        FPN(CHANNELS, 16, coarsest_lateral=False)
    with pytest.raises(ValueError, match="extra_levels"):
        FPN(CHANNELS, 16, extra_levels="pool")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxpool"):
        FPN(CHANNELS, 16, extra_levels="maxpool", extra_input="input")
    with pytest.raises(ValueError, match="expects 4 features"):
        FPN(CHANNELS, 16)(_features()[:3])
