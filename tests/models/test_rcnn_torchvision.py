"""Mask R-CNN with torchvision's weights and settings gives torchvision's detections.

Both torchvision variants (``maskrcnn_resnet50_fpn`` and ``_v2``), random weights saved to a
file, two images of different sizes in one batch, eval mode. torchvision resizes inside its
model; here its resize is switched off (our data layer resizes), and our batch is padded with
the mean colour, which is what torchvision's zero padding after normalisation is.

Tolerances: labels exactly, boxes within 1e-4 px and scores within 1e-6 (the arithmetic is the
same torchvision ops; the v2 heads' BatchNorm rounds differently in the last bit), each
detection paired with its counterpart since detections of equal score may come in either order;
pasted mask probabilities within 2e-5 (our pasting sums the
same bilinear products in another order); thresholded masks agree on all but 0.1 % of pixels
(random-init mask logits sit near 0.5, where any rounding flips a pixel).
"""

from __future__ import annotations

import pytest
import torch

from lightning_seg.models.backbone import _freeze_batchnorm
from lightning_seg.models.rcnn import (
    MaskRCNN,
    mask_rcnn_from_torchvision,
    torchvision_settings,
)
from lightning_seg.ops.mask_paste import paste_masks

tv_detection = pytest.importorskip("torchvision.models.detection")

K = 5
SIZES = [(320, 256), (288, 320)]


def torchvision_model(version: str):
    torch.manual_seed(0)
    fn = tv_detection.maskrcnn_resnet50_fpn if version == "v1" else tv_detection.maskrcnn_resnet50_fpn_v2
    model = fn(weights=None, weights_backbone=None, num_classes=K + 1, box_score_thresh=0.01).eval()
    with torch.no_grad():
        # spread the class scores, and give BN non-trivial statistics, so the detections are varied
        for name, p in model.named_parameters():
            if "box_predictor" in name or "mask_fcn_logits" in name:
                p.normal_(0, 0.02)
        for m in model.backbone.body.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    if version == "v1":  # what torchvision builds when it loads weights: frozen BN in the ResNet
        _freeze_batchnorm(model.backbone.body)
    model.transform.resize = lambda image, target=None: (image, target)
    return model


def inputs():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, *s, generator=g) for s in SIZES]
    h, w = (-(-max(s[i] for s in SIZES) // 32) * 32 for i in (0, 1))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    batch = mean.expand(len(images), 3, h, w).clone()
    for i, im in enumerate(images):
        batch[i, :, : im.shape[1], : im.shape[2]] = im
    return images, batch, torch.tensor(SIZES)


def ours_outputs(model: MaskRCNN, batch, sizes):
    with torch.no_grad():
        det = model(batch, sizes)
        preds = model.postprocess(det, sizes, SIZES)
    probs, start = [], 0
    for n, size in zip(det.counts.tolist(), SIZES):
        probs.append(paste_masks(det.mask_probs[start:start + n], det.boxes[start:start + n], size, None,
                                 mode="torchvision"))
        start += n
    return preds, probs


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_torchvision_weights_give_torchvision_detections(version, tmp_path):
    tv = torchvision_model(version)
    path = tmp_path / "maskrcnn.pt"
    torch.save(tv.state_dict(), path)
    images, batch, sizes = inputs()
    with torch.no_grad():
        ref = tv(images)
    ours = mask_rcnn_from_torchvision(path, version, roi_heads=dict(
        vars(torchvision_settings(version)["roi_heads"]), score_threshold=0.01)).eval()
    preds, probs = ours_outputs(ours, batch, sizes)
    for r, p, prob in zip(ref, preds, probs):
        assert len(r["boxes"]) >= 5
        assert len(r["boxes"]) == len(p["boxes"])
        # detections of equal score may come in either order: pair each with its counterpart
        cost = (r["boxes"][:, None] - p["boxes"][None]).abs().amax(-1) + (r["scores"][:, None] - p["scores"][None]).abs()
        cost[(r["labels"][:, None] - 1) != p["labels"][None]] = float("inf")
        got = cost.argmin(1)
        want = torch.arange(len(got))
        assert sorted(got.tolist()) == want.tolist()
        torch.testing.assert_close(p["boxes"][got], r["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(p["scores"][got], r["scores"], atol=1e-6, rtol=0)
        torch.testing.assert_close(prob[got], r["masks"][want, 0], atol=2e-5, rtol=0)
        flipped = ((r["masks"][want, 0] >= 0.5) != p["masks"][got]).float().mean()
        assert flipped < 1e-3

    fresh = MaskRCNN(K, **{**torchvision_settings(version), "roi_heads": dict(
        vars(torchvision_settings(version)["roi_heads"]), score_threshold=0.01)}).eval()
    fresh_preds, _ = ours_outputs(fresh, batch, sizes)
    r, p = ref[0], fresh_preds[0]
    assert len(r["boxes"]) != len(p["boxes"]) or not torch.allclose(r["boxes"], p["boxes"])


def test_wrong_checkpoint_names_file_and_keys(tmp_path):
    path = tmp_path / "not_rcnn.pt"
    torch.save({"roi_heads.box_predictor.cls_score.weight": torch.zeros(K + 1, 8)}, path)
    model = MaskRCNN(K, **torchvision_settings("v1"))
    from lightning_seg.models.rcnn import load_torchvision_weights

    with pytest.raises(ValueError, match="not_rcnn.pt.*missing"):
        load_torchvision_weights(model, path)
    with pytest.raises(ValueError, match="has 5 classes.*has 3"):
        load_torchvision_weights(MaskRCNN(3, **torchvision_settings("v1")), path)


def test_class_ids_pick_and_reorder_torchvision_classes():
    tv = torchvision_model("v1")
    settings = torchvision_settings("v1")
    settings["roi_heads"].score_threshold = 0.01
    full = mask_rcnn_from_torchvision(tv.state_dict(), "v1", roi_heads=settings["roi_heads"]).eval()
    picked = MaskRCNN(2, **settings)
    from lightning_seg.models.rcnn import load_torchvision_weights

    load_torchvision_weights(picked, tv.state_dict(), class_ids=[4, 2]).eval()
    state, sub = full.state_dict(), picked.state_dict()
    # our class 0 = torchvision label 4 = full model's class 3; background stays last
    assert torch.equal(sub["roi_heads.box_predictor.cls_score.weight"][0], state["roi_heads.box_predictor.cls_score.weight"][3])
    assert torch.equal(sub["roi_heads.box_predictor.cls_score.weight"][2], state["roi_heads.box_predictor.cls_score.weight"][K])
    assert torch.equal(sub["roi_heads.box_predictor.bbox_pred.weight"][4:8], state["roi_heads.box_predictor.bbox_pred.weight"][4:8])
    assert torch.equal(sub["roi_heads.mask_head.predictor.weight"][0], state["roi_heads.mask_head.predictor.weight"][3])
    with pytest.raises(ValueError, match="class_ids"):
        load_torchvision_weights(MaskRCNN(2, **settings), tv.state_dict(), class_ids=[4, 9])


def test_legacy_key_names_and_a_single_class_load(tmp_path):
    """torchvision's published COCO file predates its version-2 key names; one class + background."""
    from lightning_seg.models.rcnn import load_torchvision_weights

    torch.manual_seed(0)
    tv = tv_detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    state = tv.state_dict()
    legacy = {}
    for key, value in state.items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            key = key.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.")
            key = key.replace(f"fpn.layer_blocks.{i}.0.", f"fpn.layer_blocks.{i}.")
            key = key.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
        legacy[key] = value
    assert "rpn.head.conv.weight" in legacy and "roi_heads.mask_head.mask_fcn4.bias" in legacy
    new, old = MaskRCNN(1, **torchvision_settings("v1")), MaskRCNN(1, **torchvision_settings("v1"))
    load_torchvision_weights(new, state)
    load_torchvision_weights(old, legacy)
    assert new.state_dict()["roi_heads.box_predictor.bbox_pred.weight"].shape == (4, 1024)
    for key, value in new.state_dict().items():
        assert torch.equal(value, old.state_dict()[key]), key
