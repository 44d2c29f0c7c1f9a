"""Mask R-CNN pieces: RoI sampling against a per-image loop, crowd handling, empty images, settings."""

from __future__ import annotations

import io

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from lightning_seg.models.rcnn import (
    BoxTargets,
    RoIHeads,
    RoIHeadsSettings,
    box_targets_from_batch,
)
from lightning_seg.structures import collate
from lightning_seg.tasks import RCNNModule

K = 3
TINY = dict(backbone="resnet10t", backbone_source="timm", fpn_channels=16,
            rpn=dict(pre_nms_topk_train=100, post_nms_topk_train=30, pre_nms_topk_test=100, post_nms_topk_test=30),
            roi_heads=dict(batch_size_per_image=16, box_head_dim=16, mask_head_dims=[8]), num_overlays=0)


def random_boxes(n, g, size=64.0):
    xy = torch.rand(n, 2, generator=g) * size
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * size / 2 + 2], 1)


def test_roi_sampling_equals_per_image_loop():
    g = torch.Generator().manual_seed(0)
    b, p = 3, 40
    proposals = random_boxes(b * p, g).view(b, p, 4)
    valid = torch.rand(b, p, generator=g) > 0.2
    counts = [4, 0, 2]
    gt = torch.zeros(b, 4, 4)
    gt_valid = torch.zeros(b, 4, dtype=torch.bool)
    labels = torch.randint(0, K, (b, 4), generator=g)
    for i, n in enumerate(counts):
        gt[i, :n] = random_boxes(n, g)
        gt_valid[i, :n] = True
        proposals[i, :n] = gt[i, :n] + torch.rand(n, 4, generator=g) * 3  # some foreground
    targets = BoxTargets(gt, labels, gt_valid, torch.zeros(b, 4, dtype=torch.int64), None,
                         torch.zeros(b, 1, 4), torch.zeros(b, 1, dtype=torch.bool))
    settings = RoIHeadsSettings(batch_size_per_image=12, positive_fraction=0.25, mask_on=False)
    heads = RoIHeads(8, [4, 8, 16, 32], K, settings)
    torch.manual_seed(3)
    bi, boxes, classes, _, fg = heads.sample_proposals(proposals, valid, targets)
    torch.manual_seed(3)
    keys = torch.rand(b, p + 4)
    matcher = Matcher(0.5, 0.5, allow_low_quality_matches=False)
    for i, n in enumerate(counts):
        cand = torch.cat([proposals[i], gt[i]])
        ok = torch.cat([valid[i], gt_valid[i]])
        if n:
            m = matcher(box_iou(gt[i, :n], cand))
            lab = (m >= 0).long()
        else:
            m, lab = torch.zeros(p + 4, dtype=torch.int64), torch.zeros(p + 4, dtype=torch.int64)
        lab[~ok] = -1
        pos = torch.nonzero(lab == 1).squeeze(1)
        pos = pos[keys[i, pos].argsort(descending=True)[:3]]
        neg = torch.nonzero(lab == 0).squeeze(1)
        neg = neg[keys[i, neg].argsort(descending=True)[: 12 - len(pos)]]
        want = {(tuple(cand[j].tolist()), int(labels[i, m[j]]) if j in pos else K) for j in torch.cat([pos, neg]).tolist()}
        mine = bi == i
        got = {(tuple(bx.tolist()), int(c)) for bx, c in zip(boxes[mine], classes[mine])}
        assert got == want
        assert int(fg[mine].sum()) == len(pos)


def _sample(h, w, masks, labels, crowd):
    n = len(labels)
    boxes = torch.zeros(n, 4)
    for i, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return dict(image=torch.randint(0, 256, (3, h, w), dtype=torch.uint8), masks=masks, labels=torch.tensor(labels),
                iscrowd=torch.tensor(crowd, dtype=torch.bool), is_thing=torch.ones(n, dtype=torch.bool),
                semantic=torch.full((h, w), 255), boxes=boxes, image_id=0, orig_size=(h, w))


def test_crowd_regions_are_neither_positive_nor_negative():
    h = w = 64
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 4:20, 4:20] = True
    masks[1, 20:64, 24:64] = True  # crowd
    batch = collate([_sample(h, w, masks, [0, 1], [False, True])], size_divisibility=1)
    targets = box_targets_from_batch(batch["targets"])
    assert targets.valid.tolist() == [[True]] and targets.crowd_valid.tolist() == [[True]]
    task = RCNNModule(K, **TINY)
    feats = task.model.features(batch["images"])
    anchors = torch.cat(task.model.rpn.anchors([tuple(f.shape[-2:]) for f in feats], (h, w)))
    _, labels = task.model.rpn.label_anchors(anchors, targets)
    inside = (anchors[:, 0] >= 24) & (anchors[:, 1] >= 20) & (anchors[:, 2] <= 64) & (anchors[:, 3] <= 64)
    assert inside.any() and (labels[0, inside] == -1).all()
    assert (labels[0, ~inside] != -1).any()


def test_images_without_ground_truth_give_zero_mask_loss():
    h = w = 48
    empty = _sample(h, w, torch.zeros(0, h, w, dtype=torch.bool), [], [])
    batch = collate([empty, dict(empty, image_id=1)], size_divisibility=1)
    task = RCNNModule(K, **TINY).train()
    terms = task.compute_losses(batch)
    assert float(terms["loss_mask"]) == 0.0 and float(terms["loss_box_reg"]) == 0.0
    assert float(terms["loss_cls"]) > 0 and all(torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()


def test_settings_are_checked_and_stored_as_plain_dicts():
    with pytest.raises(ValueError, match=r"model.roi_heads: unknown keys \['batch_size'\]"):
        RCNNModule(K, **{**TINY, "roi_heads": dict(batch_size=3)})
    task = RCNNModule(K, **TINY)
    assert isinstance(task.hparams.rpn, dict) and task.hparams.roi_heads["batch_size_per_image"] == 16
    assert task.model.roi_heads.settings.batch_size_per_image == 16
    buffer = io.BytesIO()
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["hyper_parameters"]["rpn"]["post_nms_topk_train"] == 30


@pytest.mark.parametrize("torchvision_style", [False, True])
def test_anchor_grid_iou_equals_box_iou(torchvision_style):
    from lightning_seg.models.rcnn import AnchorGrid

    grid = AnchorGrid(((16,), (32,), (64,)), (0.5, 1.0, 2.0), (4, 8, 16), round_cells=torchvision_style,
                      stride_from_sizes=torchvision_style)
    sizes, padded = [(12, 13), (6, 7), (3, 4)], (48, 52)
    anchors = torch.cat(grid(sizes, padded))
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([random_boxes(7, g, 40), torch.zeros(1, 4)])
    torch.testing.assert_close(grid.iou(boxes, sizes, padded), box_iou(boxes, anchors).nan_to_num())


def test_no_rois_give_no_detections_and_no_crash():
    heads = RoIHeads(8, [4, 8, 16, 32], K, RoIHeadsSettings(mask_on=False))
    det = heads.select_detections(torch.zeros(0, K + 1), torch.zeros(0, 4 * K), torch.zeros(0, 4),
                                  torch.zeros(0, dtype=torch.int64), torch.tensor([[32, 32], [16, 20]]))
    assert det.boxes.shape == (0, 4) and det.counts.tolist() == [0, 0]


def test_detections_equal_nms_over_every_candidate():
    """The top-M shortcut of select_detections against plain per-image, per-class NMS."""
    from torchvision.ops import batched_nms

    g = torch.Generator().manual_seed(1)
    counts, k = [30, 0, 50, 7], 4
    settings = RoIHeadsSettings(mask_on=False, detections_per_image=3, score_threshold=0.05)
    heads = RoIHeads(8, [4, 8, 16, 32], k, settings)
    r = sum(counts)
    logits = torch.randn(r, k + 1, generator=g) * 2
    deltas = torch.randn(r, 4 * k, generator=g) * 0.2
    boxes = random_boxes(r, g)
    index = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    sizes = torch.tensor([[80, 80]] * 4)
    det = heads.select_detections(logits, deltas, boxes, index, sizes)
    scores = logits.softmax(-1)[:, :k]
    pred = heads.box_coder.decode_single(deltas, boxes).view(r, k, 4).clamp(0, 80)
    start = 0
    for i, n in enumerate(counts):
        sl = slice(start, start + n)
        start += n
        s, b = scores[sl].reshape(-1), pred[sl].reshape(-1, 4)
        c = torch.arange(k).repeat(n)
        keep = (s > 0.05) & ((b[:, 2:] - b[:, :2]) > 0).all(1)
        s, b, c = s[keep], b[keep], c[keep]
        top = batched_nms(b, s, c, 0.5)[:3]
        mine = det.image_index == i
        torch.testing.assert_close(det.scores[mine], s[top])
        torch.testing.assert_close(det.boxes[mine], b[top])
        assert torch.equal(det.labels[mine], c[top])
