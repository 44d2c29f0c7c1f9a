"""Contract and parity tests of the per-pixel models (FCN, U-Net, DeepLabV3(+), Semantic FPN)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import FeaturePyramidNetwork

from lightning_seg.models import (
    FCN,
    MODEL_REGISTRY,
    DeepLabV3,
    DeepLabV3Plus,
    SemanticFPN,
    UNet,
    convert_torchvision_state_dict,
    create_model,
    list_models,
    load_torchvision_weights,
)
from lightning_seg.models.semantic.semantic_fpn import FPN
from lightning_seg.models.semantic.unet import PlainUNetEncoder

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
K = 3
SWIN = dict(img_size=64, strict_img_size=False, depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8))

# Small heads keep every case to a fraction of a second on a shared CPU.
ARCHS = {
    "fcn": dict(),
    "fcn8s": dict(skip_stages=2, output_stride=32),
    "unet": dict(decoder_channels=None),
    "deeplabv3": dict(aspp_channels=16),
    "deeplabv3plus": dict(aspp_channels=16, low_level_channels=8),
    "semantic_fpn": dict(fpn_channels=16, head_channels=8),
}
BACKBONES = {
    "resnet10t": dict(backbone="resnet10t"),
    "convnext_atto": dict(backbone="convnext_atto"),
    "tv_resnet18": dict(backbone="resnet18", backbone_source="torchvision"),
    "swin": dict(backbone="swin_tiny_patch4_window7_224", backbone_kwargs=SWIN),
}


def build(arch: str, backbone: str, **extra) -> torch.nn.Module:
    kwargs = dict(ARCHS[arch])
    kwargs.update(BACKBONES[backbone])
    name = "fcn" if arch == "fcn8s" else arch
    if name in ("fcn", "deeplabv3", "deeplabv3plus") and backbone in ("tv_resnet18", "swin") and "output_stride" not in kwargs:
        kwargs["output_stride"] = 32  # torchvision BasicBlock / Swin cannot be dilated
    if name == "unet":
        kwargs["decoder_channels"] = [16, 16, 8, 8, 8]
    kwargs.update(extra)
    return create_model(name, num_classes=K, **kwargs)


CASES = [(a, "resnet10t") for a in ARCHS]
CASES += [("unet", "convnext_atto"), ("deeplabv3plus", "convnext_atto"), ("semantic_fpn", "convnext_atto"),
          ("fcn", "tv_resnet18"), ("unet", "tv_resnet18"), ("semantic_fpn", "swin")]


@pytest.mark.parametrize("arch,backbone", CASES)
def test_forward_backward_at_odd_sizes(arch, backbone):
    torch.manual_seed(0)
    model = build(arch, backbone, aux_head=True)
    model.train()
    for h, w in [(37, 45)]:
        out = model(torch.rand(2, 3, h, w))
        assert set(out) == {"out", "aux"}
        for logits in out.values():
            assert logits.dtype == torch.float32 and tuple(logits.shape) == (2, K, h, w)
            assert torch.isfinite(logits).all()
    (out["out"].logsumexp(1).mean() + 0.4 * out["aux"].logsumexp(1).mean()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    x = torch.rand(2, 3, 33, 41)
    with torch.no_grad():
        both, first = model(x), model(x[:1])
    assert tuple(both["out"].shape) == (2, K, 33, 41)
    # Eval mode: no cross-image leakage (BatchNorm uses running statistics).
    torch.testing.assert_close(both["out"][:1], first["out"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both["aux"][:1], first["aux"], rtol=1e-4, atol=1e-5)


def test_without_aux_head_returns_a_tensor():
    model = build("semantic_fpn", "resnet10t").eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 40, 56))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, K, 40, 56)


@pytest.mark.parametrize("cls", [FCN, UNet, DeepLabV3, DeepLabV3Plus, SemanticFPN])
def test_constructors_are_configurable_by_class_path(cls):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--model", type=torch.nn.Module)
    init_args = {"num_classes": K, "backbone": "resnet10t", "pretrained": False,
                 "backbone_kwargs": {"drop_path_rate": 0.0}, "frozen_stages": -1}
    cfg = parser.parse_object({"model": {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init_args}})
    assert cfg.model.init_args.num_classes == K
    if cls is SemanticFPN:
        model = parser.instantiate(cfg).model
        assert isinstance(model, SemanticFPN) and model.num_classes == K


def test_registry_and_create_model():
    assert list_models() == sorted(MODEL_REGISTRY) and {"fcn", "unet", "deeplabv3", "deeplabv3plus", "semantic_fpn"} <= set(list_models())
    assert isinstance(create_model("DeepLabV3Plus".lower(), num_classes=2, backbone="resnet10t", aspp_channels=8,
                                   low_level_channels=4), DeepLabV3Plus)
    with pytest.raises(ValueError, match="pspnet"):
        create_model("pspnet", num_classes=2)


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


def test_fpn_matches_torchvision_feature_pyramid():
    torch.manual_seed(0)
    chans = [8, 16, 32, 64]
    ours = FPN(chans, 12)
    ref = FeaturePyramidNetwork(chans, 12)
    with torch.no_grad():
        for i in range(4):
            ref.inner_blocks[i][0].weight.copy_(ours.lateral[i][0].weight)
            ref.inner_blocks[i][0].bias.copy_(ours.lateral[i][0].bias)
            ref.layer_blocks[i][0].weight.copy_(ours.output[i][0].weight)
            ref.layer_blocks[i][0].bias.copy_(ours.output[i][0].bias)
    feats = [torch.rand(2, c, math.ceil(37 / s), math.ceil(45 / s)) for c, s in zip(chans, (4, 8, 16, 32))]
    theirs = list(ref({str(i): f for i, f in enumerate(feats)}).values())
    for a, b in zip(ours(feats), theirs):
        torch.testing.assert_close(a, b)


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


def test_torch_compile_graph_capture():
    torch.manual_seed(0)
    model = build("deeplabv3plus", "resnet10t").eval()
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fcn", "unet", "semantic_fpn"])
def test_torch_compile_inductor(arch):
    torch.manual_seed(0)
    model = build(arch, "resnet10t").eval()
    compiled = torch.compile(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-4)
