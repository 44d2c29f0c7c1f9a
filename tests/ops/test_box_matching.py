"""Batched anchor / RoI matching and sampling equal per-image references.

References: torchvision's ``box_iou`` and ``Matcher`` image by image, and per-image sampling
loops written here over the same random draw (``torch.rand(B, A)`` after the same seed).
"""

from __future__ import annotations

import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from lightning_seg.ops.box_matching import (
    batched_box_ioa,
    batched_box_iou,
    ignore_crowd_overlaps,
    match_boxes,
    sample_balanced,
)


def random_boxes(n: int, g: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], 1)


def padded_gt(counts: list[int], g: torch.Generator):
    gmax = max(counts)
    boxes = torch.zeros(len(counts), gmax, 4)
    valid = torch.zeros(len(counts), gmax, dtype=torch.bool)
    for i, n in enumerate(counts):
        boxes[i, :n] = random_boxes(n, g)
        valid[i, :n] = True
    return boxes, valid


def test_batched_iou_and_ioa_equal_torchvision_per_image():
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(30, g).view(3, 10, 4), random_boxes(21, g).view(3, 7, 4)
    got = batched_box_iou(a, b)
    for i in range(3):
        torch.testing.assert_close(got[i], box_iou(a[i], b[i]))
    ioa = batched_box_ioa(a, b)
    for i in range(3):
        for n in range(10):
            for m in range(7):
                x1, y1 = torch.maximum(a[i, n, :2], b[i, m, :2])
                x2, y2 = torch.minimum(a[i, n, 2:], b[i, m, 2:])
                inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
                area = (a[i, n, 2] - a[i, n, 0]) * (a[i, n, 3] - a[i, n, 1])
                torch.testing.assert_close(ioa[i, n, m], inter / area)


def test_match_equals_torchvision_matcher_per_image():
    g = torch.Generator().manual_seed(1)
    anchors = random_boxes(400, g)
    counts = [5, 0, 3]
    gt, valid = padded_gt(counts, g)
    iou = box_iou(gt.view(-1, 4), anchors).view(3, -1, 400)
    for low_quality, (high, low) in [(True, (0.7, 0.3)), (False, (0.5, 0.5))]:
        matches, labels = match_boxes(iou, valid, high, low, allow_low_quality=low_quality)
        matcher = Matcher(high, low, allow_low_quality_matches=low_quality)
        for i, n in enumerate(counts):
            if n == 0:
                assert (labels[i] == 0).all()
                continue
            ref = matcher(box_iou(gt[i, :n], anchors))
            want = torch.where(ref >= 0, 1, torch.where(ref == Matcher.BELOW_LOW_THRESHOLD, 0, -1))
            assert torch.equal(labels[i].long(), want)
            fg = ref >= 0
            assert torch.equal(matches[i][fg], ref[fg])


def test_crowd_overlaps_are_ignored_not_negative():
    anchors = torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [55, 55, 70, 70], [0, 50, 10, 60.]])
    labels = torch.tensor([[0, 0, 1, 0]], dtype=torch.int8)
    crowd = torch.tensor([[[45, 45, 80, 80.]]])
    out = ignore_crowd_overlaps(labels, anchors, crowd, torch.tensor([[True]]), 0.5)
    # anchor 1 lies inside the crowd box: ignored; anchor 2 stays positive; the rest stay negative
    assert out.tolist() == [[0, -1, 1, 0]]
    assert ignore_crowd_overlaps(labels, anchors, crowd, torch.tensor([[False]]), 0.5).tolist() == labels.tolist()


def test_sampling_equals_per_image_loop_with_the_same_draw():
    g = torch.Generator().manual_seed(2)
    b, a = 4, 300
    labels = torch.randint(-1, 2, (b, a), generator=g).to(torch.int8)
    labels[1] = torch.where(labels[1] == 1, torch.zeros_like(labels[1]), labels[1])  # no positives
    labels[2, :290] = 1  # more positives than the quota
    num, fraction = 64, 0.25
    torch.manual_seed(7)
    pos, neg = sample_balanced(labels, num, fraction)
    torch.manual_seed(7)
    keys = torch.rand(b, a)
    for i in range(b):
        p_idx = torch.nonzero(labels[i] == 1).squeeze(1)
        p_keep = p_idx[keys[i, p_idx].argsort(descending=True)[: int(num * fraction)]]
        n_idx = torch.nonzero(labels[i] == 0).squeeze(1)
        n_keep = n_idx[keys[i, n_idx].argsort(descending=True)[: num - len(p_keep)]]
        assert set(torch.nonzero(pos[i]).squeeze(1).tolist()) == set(p_keep.tolist())
        assert set(torch.nonzero(neg[i]).squeeze(1).tolist()) == set(n_keep.tolist())
    assert not (pos & neg).any()
    assert int(pos[1].sum()) == 0 and int(neg[1].sum()) == min(num, int((labels[1] == 0).sum()))
    assert int(pos[2].sum()) == 16
