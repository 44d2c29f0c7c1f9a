"""Backbone contract: shapes at odd sizes, normalisation, torchvision parity, freezing, weights."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from lightning_seg.models.backbone import Backbone

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

CASES = [
    (dict(name="resnet10t"), [4, 8, 16, 32]),
    (dict(name="resnet18", output_stride=8), [4, 8, 8, 8]),
    (dict(name="convnext_atto"), [4, 8, 16, 32]),
    (dict(name="convnext_atto", output_stride=16), [4, 8, 16, 16]),
    (dict(name="swin_tiny_patch4_window7_224", img_size=64, strict_img_size=False, depths=(1, 1, 1, 1)), [4, 8, 16, 32]),
    (dict(name="vit_tiny_patch16_224", dynamic_img_size=True), [4, 8, 16, 32]),
    (dict(name="resnet18", source="torchvision"), [4, 8, 16, 32]),
    (dict(name="resnet50", source="torchvision", output_stride=16), [4, 8, 16, 16]),
]


@pytest.mark.parametrize("kwargs,strides", CASES, ids=lambda c: str(c))
def test_feature_shapes_are_ceil_of_stride(kwargs, strides):
    backbone = Backbone(**kwargs).eval()
    assert backbone.strides == strides
    for h, w in [(64, 64), (67, 45)]:
        with torch.no_grad():
            feats = backbone(torch.rand(1, 3, h, w))
        assert len(feats) == len(backbone.channels) == 4
        for f, c, s in zip(feats, backbone.channels, backbone.strides):
            assert f.dtype == torch.float32
            assert tuple(f.shape) == (1, c, math.ceil(h / s), math.ceil(w / s))


@pytest.mark.parametrize("kwargs,names", [
    (dict(name="resnet10t"), ["res2", "res3", "res4", "res5"]),
    (dict(name="resnet18", output_stride=8), ["res2", "res3", "res4", "res5"]),
    (dict(name="resnet10t", min_stride=2), ["stem", "res2", "res3", "res4", "res5"]),
    (dict(name="vit_tiny_patch16_224", dynamic_img_size=True), ["res2", "res3", "res4", "res5"]),
    (dict(name="vit_tiny_patch16_224", dynamic_img_size=True, simple_pyramid=False), [f"feature{i}" for i in range(4)]),
    (dict(name="resnet50", source="torchvision", output_stride=8, out_indices=(0, 2, 4)), ["stem", "res3", "res5"]),
])
def test_features_by_name_for_multiscale_roi_align(kwargs, names):
    from torchvision.ops import MultiScaleRoIAlign

    backbone = Backbone(**kwargs).eval()
    assert backbone.feature_names == names
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        by_name = backbone.named_features(x)
        by_position = backbone(x)
    assert list(by_name) == names and backbone.feature_strides == dict(zip(names, backbone.strides))
    for a, b in zip(by_name.values(), by_position):
        torch.testing.assert_close(a, b)
    # torchvision's pooler picks the level by its name (one level here: the levels' widths differ)
    pool = MultiScaleRoIAlign([names[-1]], output_size=7, sampling_ratio=2)
    boxes = [torch.tensor([[4.0, 4.0, 40.0, 50.0]]), torch.tensor([[0.0, 0.0, 79.0, 63.0]])]
    assert pool(by_name, boxes, [(64, 80)] * 2).shape == (2, backbone.channels[-1], 7, 7)


def test_timm_features_match_timm_on_normalised_input():
    backbone = Backbone("resnet10t").eval()
    ref = timm.create_model("resnet10t", features_only=True, out_indices=(1, 2, 3, 4)).eval()
    ref.load_state_dict(backbone.model.state_dict())
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        ours, theirs = backbone(x), ref((x - MEAN) / STD)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_swin_features_are_nchw_permutation_of_timm():
    backbone = Backbone("swin_tiny_patch4_window7_224", img_size=64, strict_img_size=False, depths=(1, 1, 1, 1)).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ours = backbone(x)
        theirs = backbone.model((x - MEAN) / STD)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b.permute(0, 3, 1, 2))


@pytest.mark.parametrize("name,output_stride,channels", [("resnet18", 32, [64, 128, 512]), ("resnet50", 8, [64, 512, 2048])])
def test_torchvision_features_match_intermediate_layer_getter(name, output_stride, channels):
    backbone = Backbone(name, source="torchvision", output_stride=output_stride, out_indices=(0, 2, 4)).eval()
    assert backbone.channels == channels
    dilate = output_stride == 8
    ref = torchvision.models.get_model(name, replace_stride_with_dilation=[False, dilate, dilate])
    ref.load_state_dict(backbone.model.state_dict(), strict=False)
    getter = IntermediateLayerGetter(ref, {"relu": "0", "layer2": "2", "layer4": "4"}).eval()
    x = torch.rand(2, 3, 41, 50)
    with torch.no_grad():
        ours, theirs = backbone(x), getter((x - MEAN) / STD)
    for a, key in zip(ours, ("0", "2", "4")):
        torch.testing.assert_close(a, theirs[key])


def test_custom_pixel_statistics_are_used():
    backbone = Backbone("resnet10t", pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ours = backbone(x)[0]
        theirs = backbone.model((x - 0.5) / 0.5)[1]
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_frozen_stages_freeze_stem_and_first_stages(source):
    backbone = Backbone("resnet18", source=source, frozen_stages=1)
    backbone.train()
    conv1 = backbone.model.conv1
    assert not conv1.weight.requires_grad
    assert all(not p.requires_grad for p in backbone.model.layer1.parameters())
    assert all(p.requires_grad for p in backbone.model.layer2.parameters())
    # Frozen stages keep their BatchNorm statistics even in train mode.
    assert not backbone.model.layer1.training and backbone.model.layer2.training
    feats = backbone(torch.rand(2, 3, 32, 32))
    sum(f.sum() for f in feats).backward()
    assert conv1.weight.grad is None and backbone.model.layer2[0].conv1.weight.grad is not None


def test_freeze_bn_replaces_batchnorm_with_frozen_copies():
    ref = Backbone("resnet18", source="torchvision").eval()
    with torch.no_grad():
        ref.model.bn1.running_mean.uniform_(-0.5, 0.5)
    frozen = Backbone("resnet18", source="torchvision", freeze_bn=True)
    frozen.load_state_dict(ref.state_dict())
    assert isinstance(frozen.model.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    frozen.train()  # frozen statistics: train mode gives the eval-mode output
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(frozen(x), ref(x)):
            torch.testing.assert_close(a, b)


def test_local_weights_file_is_loaded(tmp_path):
    source = timm.create_model("resnet10t")
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    backbone = Backbone("resnet10t", pretrained=str(path))
    torch.testing.assert_close(backbone.model.layer4[0].conv1.weight, source.layer4[0].conv1.weight)

    tv = torchvision.models.resnet18()
    tv_path = tmp_path / "resnet18_tv.pth"
    torch.save(tv.state_dict(), tv_path)
    backbone = Backbone("resnet18", source="torchvision", pretrained=str(tv_path))
    torch.testing.assert_close(backbone.model.layer4[0].conv1.weight, tv.layer4[0].conv1.weight)


def test_vit_default_picks_evenly_spaced_blocks():
    backbone = Backbone("vit_tiny_patch16_224", dynamic_img_size=True)
    assert [m for m in backbone.model.feature_info.module_name()] == ["blocks.2", "blocks.5", "blocks.8", "blocks.11"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="not_a_model"), "not_a_model"),
        (dict(name="resnet18", output_stride=4), "output_stride"),
        (dict(name="resnet18", pretrained="/nonexistent/weights.pth"), "weights.pth"),
        (dict(name="vgg16", source="torchvision"), "vgg16"),
        (dict(name="resnet18", source="torchvision", output_stride=8), "dilated"),
        (dict(name="resnet18", source="caffe"), "caffe"),
        (dict(name="resnet18", frozen_stages=7), "frozen_stages"),
        (dict(name="resnet18", pixel_std=(0.0, 1.0, 1.0)), "pixel_std"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        Backbone(**kwargs)


def test_bad_input_raises():
    backbone = Backbone("resnet10t")
    with pytest.raises(ValueError, match="float"):
        backbone(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        backbone(torch.zeros(1, 1, 32, 32))


def test_plain_vit_gets_a_simple_feature_pyramid():
    """A ViT's stride-16 blocks come out at strides 4/8/16/32 (ViTDet), at ceil sizes."""
    from lightning_seg.models import Backbone

    bb = Backbone("vit_tiny_patch16_224", dynamic_img_size=True, depth=4)
    assert bb.strides == [4, 8, 16, 32] and bb.channels == [48, 96, 192, 192]
    x = torch.rand(1, 3, 65, 97)
    feats = bb(x)
    for f, s, c in zip(feats, bb.strides, bb.channels):
        assert f.shape == (1, c, -(-65 // s), -(-97 // s))
    sum(f.mean() for f in feats).backward()
    off = Backbone("vit_tiny_patch16_224", dynamic_img_size=True, depth=4, simple_pyramid=False)
    assert off.strides == [16, 16, 16, 16]


def test_mask2former_on_vit_predicts_masks_at_stride_4():
    from lightning_seg.models import Mask2Former

    m = Mask2Former(3, backbone="vit_tiny_patch16_224", backbone_kwargs={"dynamic_img_size": True, "depth": 4},
                    conv_dim=32, mask_dim=32, enc_layers=1, num_queries=4, hidden_dim=32, nheads=2,
                    dim_feedforward=64, num_decoder_layers=3)
    out = m(torch.rand(1, 3, 64, 96))
    assert out["pred_masks"].shape == (1, 4, 16, 24)
