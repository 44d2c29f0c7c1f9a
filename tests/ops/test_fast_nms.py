"""Fast NMS against a transcription of YOLACT's ``Detect.fast_nms`` (with its candidate filter),
image by image."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.ops.fast_nms import fast_nms


def _jaccard(a, b):
    area_a = ((a[:, :, 2] - a[:, :, 0]) * (a[:, :, 3] - a[:, :, 1]))[:, :, None]
    area_b = ((b[:, :, 2] - b[:, :, 0]) * (b[:, :, 3] - b[:, :, 1]))[:, None, :]
    lt = torch.max(a[:, :, None, :2], b[:, None, :, :2])
    rb = torch.min(a[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter)


def yolact_fast_nms(boxes, scores, iou_threshold, top_k, max_detections, conf_thresh):
    """YOLACT's detect step for one image: scores ``[N, C]`` as its ``[C, N]`` transposed."""
    cur = scores.t()
    keep = cur.max(0).values > conf_thresh
    cur, boxes = cur[:, keep], boxes[keep]
    rows = torch.nonzero(keep).squeeze(1)
    if cur.shape[1] == 0:
        return [], [], []
    s, idx = cur.sort(1, descending=True)
    idx, s = idx[:, :top_k].contiguous(), s[:, :top_k]
    c, k = idx.shape
    b = boxes[idx.view(-1)].view(c, k, 4)
    iou = _jaccard(b, b)
    iou.triu_(diagonal=1)
    kept = iou.max(dim=1).values <= iou_threshold
    classes = torch.arange(c)[:, None].expand_as(kept)[kept]
    picked_rows = rows[idx][kept]
    s = s[kept]
    s, order = s.sort(0, descending=True)
    order = order[:max_detections]
    return picked_rows[order].tolist(), classes[order].tolist(), s[:max_detections].tolist()


def random_batch(g, counts, c):
    n = max(counts)
    centres = torch.rand(len(counts), 6, 2, generator=g) * 60
    pick = torch.randint(0, 6, (len(counts), n), generator=g)
    xy = centres.gather(1, pick[..., None].expand(-1, -1, 2)) + torch.randn(len(counts), n, 2, generator=g) * 3
    wh = torch.rand(len(counts), n, 2, generator=g) * 20 + 4
    boxes = torch.cat([xy, xy + wh], -1)  # clustered: many overlaps
    scores = torch.rand(len(counts), n, c, generator=g) ** 3
    valid = torch.arange(n)[None, :] < torch.tensor(counts)[:, None]
    return boxes, scores, valid


@pytest.mark.parametrize("seed", range(4))
def test_fast_nms_equals_yolact(seed):
    g = torch.Generator().manual_seed(seed)
    counts = [60, 0, 25, 7]
    boxes, scores, valid = random_batch(g, counts, 5)
    out = fast_nms(boxes, scores, valid, iou_threshold=0.5, top_k=20, max_detections=30, score_threshold=0.3)
    assert out.indices.shape == (4, 30)
    for i, n in enumerate(counts):
        rows, classes, sc = yolact_fast_nms(boxes[i, :n], scores[i, :n], 0.5, 20, 30, 0.3)
        got = out.valid[i]
        assert out.indices[i][got].tolist() == rows
        assert out.labels[i][got].tolist() == classes
        torch.testing.assert_close(out.scores[i][got], torch.tensor(sc, dtype=torch.float32))
        assert not out.valid[i, len(rows):].any() and (out.indices[i, len(rows):] == -1).all()
    assert out.valid[0].sum() > 5 and not out.valid[1].any()


def test_suppressed_boxes_still_suppress():
    """A suppresses B, B would suppress C, A does not overlap C: Fast NMS drops C too (greedy
    NMS would keep it)."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]]])
    scores = torch.tensor([[[0.9], [0.8], [0.7]]])
    out = fast_nms(boxes, scores, iou_threshold=0.3, score_threshold=0.05)
    assert out.indices[0][out.valid[0]].tolist() == [0]


def test_empty_inputs():
    out = fast_nms(torch.zeros(2, 0, 4), torch.zeros(2, 0, 3))
    assert out.indices.shape == (2, 0) and out.valid.shape == (2, 0)


def test_nan_iou_suppresses_as_in_yolact():
    """Two empty boxes of one class have IoU 0/0: YOLACT keeps a box only when its IoU max is
    <= the threshold, so the second is dropped."""
    boxes = torch.tensor([[[5.0, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]]])
    scores = torch.tensor([[[0.9], [0.8], [0.7]]])
    out = fast_nms(boxes, scores)
    rows, _, _ = yolact_fast_nms(boxes[0], scores[0], 0.5, 200, 100, 0.05)
    assert out.indices[0][out.valid[0]].tolist() == rows == [0, 2]
