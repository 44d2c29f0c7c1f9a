"""Parity and unit tests of the per-pixel models (FCN, U-Net, DeepLabV3(+), Semantic FPN); their output
contract is in ``test_model_contract.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from lightning_seg.models import (
    FCN,
    DeepLabV3,
    DeepLabV3Plus,
    SemanticFPN,
    UNet,
    convert_torchvision_state_dict,
    create_model,
    list_models,
    load_torchvision_weights,
)
from lightning_seg.models.per_pixel.unet import PlainUNetEncoder

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
K = 3

@pytest.mark.parametrize("tv_name,ours_cls", [("fcn_resnet50", FCN), ("deeplabv3_resnet50", DeepLabV3)])
def test_torchvision_weights_give_identical_outputs(tv_name, ours_cls, tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.get_model(tv_name, weights=None, weights_backbone=None, num_classes=4, aux_loss=True).eval()
    # Non-trivial BN statistics so a mis-mapped running buffer would show.
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours = ours_cls(4, backbone="resnet50", backbone_source="torchvision", output_stride=8, aux_head=True).eval()
    path = tmp_path / f"{tv_name}.pth"
    torch.save(tv.state_dict(), path)
    load_torchvision_weights(ours, str(path))
    x = torch.rand(1, 3, 45, 39)
    with torch.no_grad():
        a, b = ours(x), tv((x - MEAN) / STD)
    torch.testing.assert_close(a["out"], b["out"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a["aux"], b["aux"], rtol=1e-4, atol=1e-5)

    del ours.aux_head  # now as if built with aux_head=False: the aux weights have nowhere to go
    ours.aux_head = None
    with pytest.raises(ValueError, match="aux_head"):
        load_torchvision_weights(ours, tv.state_dict())
    with pytest.raises(KeyError, match="foo"):
        convert_torchvision_state_dict({"foo.weight": torch.zeros(1)})


def test_torchvision_weights_need_torchvision_backbone():
    model = FCN(2, backbone="resnet10t")
    with pytest.raises(ValueError, match="torchvision"):
        load_torchvision_weights(model, {})


def test_fcn_skip_fusion_matches_direct_formula():
    torch.manual_seed(0)
    fcn32 = FCN(K, backbone="resnet10t", output_stride=32).eval()
    fcn8 = FCN(K, backbone="resnet10t", output_stride=32, skip_stages=2).eval()
    assert [c.in_channels for c in fcn8.skip_scores] == [256, 128]
    fcn8.load_state_dict(fcn32.state_dict(), strict=False)
    x = torch.rand(1, 3, 64, 72)
    up = lambda t, ref: F.interpolate(t, size=ref.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
    with torch.no_grad():
        f = fcn8.backbone(x)
        # Zero-initialised skip scores: FCN-8s starts as FCN-32s upsampled in steps.
        chained = up(up(up(fcn32.head(f[3]), f[2]), f[1]), x)
        torch.testing.assert_close(fcn8(x), chained)
        for conv in fcn8.skip_scores:
            conv.weight.normal_()
            conv.bias.normal_()
        s16, s8 = fcn8.skip_scores
        expected = up(up(up(fcn8.head(f[3]), f[2]) + s16(f[2]), f[1]) + s8(f[1]), x)
        torch.testing.assert_close(fcn8(x), expected)
    with pytest.raises(ValueError, match="skip_stages"):
        FCN(K, backbone="resnet10t", skip_stages=4)


def test_semantic_fpn_branch_depths_follow_paper():
    model = SemanticFPN(K, backbone="resnet10t", fpn_channels=16, head_channels=8)
    assert [len(h) for h in model.scale_heads] == [1, 1, 2, 3]


def test_deeplab_aspp_rates_default_by_output_stride():
    m8 = DeepLabV3(K, backbone="resnet10t", output_stride=8, aspp_channels=8)
    m16 = DeepLabV3Plus(K, backbone="resnet10t", output_stride=16, aspp_channels=8)
    assert [b[0].dilation[0] for b in m8.head[0].convs[1:4]] == [12, 24, 36]
    assert [b[0].dilation[0] for b in m16.aspp.convs[1:4]] == [6, 12, 18]
    sep = DeepLabV3Plus(K, backbone="resnet10t", aspp_channels=8, aspp_separable=True, decoder_separable=True)
    assert sep.aspp.convs[1][0][0].groups == sep.backbone.channels[-1]


def test_plain_unet_encoder_and_decoder():
    encoder = PlainUNetEncoder((4, 8, 16))
    feats = encoder(torch.rand(1, 3, 21, 30))
    assert [tuple(f.shape[1:]) for f in feats] == [(4, 21, 30), (8, 11, 15), (16, 6, 8)]
    for upsampling in ("bilinear", "nearest", "transposed"):
        model = UNet(K, backbone_source="plain", plain_widths=(4, 8, 16), upsampling=upsampling)
        assert tuple(model(torch.rand(1, 3, 21, 30)).shape) == (1, K, 21, 30)
    assert [b.convs[0][0].out_channels for b in model.blocks] == [8, 4]


def test_unet_uses_stem_feature_and_trailing_blocks():
    model = UNet(K, backbone="resnet10t", decoder_channels=[16, 16, 8, 8, 8])
    assert model.backbone.strides == [2, 4, 8, 16, 32]
    model = UNet(K, backbone="convnext_atto", decoder_channels=[16, 16, 8, 8, 8])
    assert model.backbone.strides == [4, 8, 16, 32]  # two trailing blocks reach stride 1


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: UNet(K, backbone="resnet10t", decoder_channels=[8, 8]), "decoder_channels"),
        (lambda: UNet(K, backbone="vit_tiny_patch16_224", backbone_kwargs=dict(dynamic_img_size=True, simple_pyramid=False)), "strides"),
        (lambda: UNet(K, backbone="resnet10t", upsampling="cubic"), "upsampling"),
        (lambda: UNet(K, backbone_source="plain", pretrained=True), "plain"),
        (lambda: FCN(0, backbone="resnet10t"), "num_classes"),
        (lambda: DeepLabV3(K, backbone="resnet10t", aspp_rates=(0, 6)), "atrous_rates"),
        (lambda: DeepLabV3Plus(K, backbone="resnet10t", decoder_convs=0), "decoder_convs"),
        (lambda: SemanticFPN(K, backbone="resnet10t", norm="LN"), "norm"),
    ],
)
def test_bad_configuration_raises(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_frozen_backbone_passes_through_model():
    model = DeepLabV3Plus(K, backbone="resnet10t", aspp_channels=8, frozen_stages=4, freeze_bn=True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.aspp.parameters())


def test_create_model_checks_the_family_and_lists_the_valid_names():
    assert {"fcn", "unet", "deeplabv3", "deeplabv3plus", "semantic_fpn"} == set(list_models("per_pixel"))
    assert {"maskformer", "mask2former"} == set(list_models("mask_classification"))
    model = create_model("DeepLabV3Plus", "per_pixel", num_classes=2, backbone="resnet10t", aspp_channels=8,
                         low_level_channels=4)
    assert isinstance(model, DeepLabV3Plus)
    with pytest.raises(ValueError, match=r"unknown model 'pspnet'; available: \['deeplabv3'"):
        create_model("pspnet", "per_pixel", num_classes=2)
    with pytest.raises(ValueError, match=r"'mask2former' is a mask_classification model; this task takes per_pixel"):
        create_model("mask2former", "per_pixel", num_classes=2)


@pytest.mark.parametrize("task,name,family", [("SemanticSegmentationModule", "mask2former", "per_pixel"),
                                              ("MaskClassificationModule", "unet", "mask_classification")])
def test_a_task_rejects_a_model_of_another_family(task, name, family):
    import lightning_seg.tasks as tasks

    with pytest.raises(ValueError, match=rf"model\.model: '{name}' is a .* model; this task takes {family} models"):
        getattr(tasks, task)(num_classes=3, model=name, backbone="resnet10t")


def test_init_from_torchvision_prefix_fine_tunes_a_task_with_a_new_class_count(tmp_path):
    from torchvision.models.segmentation import fcn_resnet50

    from lightning_seg.tasks import SemanticSegmentationModule

    torch.manual_seed(0)
    tv = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    path = tmp_path / "fcn_resnet50.pth"
    torch.save(tv.state_dict(), path)
    task = SemanticSegmentationModule(num_classes=5, model="fcn", backbone="resnet50", backbone_source="torchvision",
                                      output_stride=8, aux_weight=0.4, init_from=f"torchvision:{path}", num_overlays=0)
    reinit = {r.split(" ")[0] for r in task.init_report["reinitialised"]}
    # the last convs of the two 21-class heads only
    assert reinit == {f"model.{h}.4.{p}" for h in ("head", "aux_head") for p in ("weight", "bias")}, reinit
    assert not task.init_report["missing"] and not task.init_report["unexpected"]
    want = convert_torchvision_state_dict(tv.state_dict())
    name = "backbone.model.layer3.0.conv2.weight"
    assert name in want and torch.equal(task.model.state_dict()[name], want[name])
