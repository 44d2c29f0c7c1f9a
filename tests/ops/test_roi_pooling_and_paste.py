"""RoI pooling, mask targets and mask pasting against torchvision and loops written here."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign, roi_align

from lightning_seg.ops.mask_paste import paste_masks
from lightning_seg.ops.roi_pooling import crop_mask_targets, multiscale_roi_align


def boxes_in(n: int, h: int, w: int, g: torch.Generator, max_side: float = 120.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 2.0, h - 2.0])
    wh = torch.rand(n, 2, generator=g) * max_side + 0.5
    b = torch.cat([xy, xy + wh], 1)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    return b


def test_multiscale_roi_align_equals_torchvision_pooler():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 256 // s, 256 // s, generator=g) for s in (4, 8, 16, 32)]
    boxes = [boxes_in(30, 256, 256, g, 250), boxes_in(20, 256, 256, g, 250)]
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    want = pooler(OrderedDict((str(i), f) for i, f in enumerate(feats)), boxes, [(256, 256), (256, 256)])
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    got = multiscale_roi_align(feats, rois, [4, 8, 16, 32], 7, sampling_ratio=2, aligned=False)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("max_elements", [1 << 26, 3000])
def test_mask_targets_equal_roi_align_of_each_mask(max_elements):
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(5, 40, 50, generator=g) > 0.6
    boxes = boxes_in(12, 40, 50, g, 30)
    index = torch.randint(0, 5, (12,), generator=g)
    got = crop_mask_targets(masks, boxes, index, 28, aligned=True, threshold=0.5, max_elements=max_elements)
    for r in range(12):
        ref = roi_align(masks[index[r]][None, None].float(), torch.cat([torch.zeros(1), boxes[r]])[None],
                        28, 1.0, 0, True)[0, 0]
        assert torch.equal(got[r], (ref >= 0.5).float())
    soft = crop_mask_targets(masks, boxes, index, 28, aligned=False, threshold=None, max_elements=max_elements)
    ref = roi_align(masks[index[3]][None, None].float(), torch.cat([torch.zeros(1), boxes[3]])[None], 28, 1.0, 0)
    torch.testing.assert_close(soft[3], ref[0, 0])


def test_torchvision_paste_equals_paste_masks_in_image():
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(40, 28, 28, generator=g)
    boxes = boxes_in(40, 90, 120, g, 80)
    want = paste_masks_in_image(masks[:, None], boxes, (90, 120))[:, 0]
    got = paste_masks(masks, boxes, (90, 120), threshold=None, mode="torchvision", max_bytes=90 * 120 * 4 * 7)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)


def test_detectron2_paste_equals_grid_sample_loop():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(10, 28, 28, generator=g)
    boxes = boxes_in(10, 60, 70, g, 50)
    got = paste_masks(masks, boxes, (60, 70), threshold=None)
    for i in range(10):
        x0, y0, x1, y1 = boxes[i].tolist()
        gx = ((torch.arange(70) + 0.5) - x0) / (x1 - x0) * 2 - 1
        gy = ((torch.arange(60) + 0.5) - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([gx[None].expand(60, -1), gy[:, None].expand(-1, 70)], -1)[None]
        ref = F.grid_sample(masks[i][None, None], grid, align_corners=False)[0, 0]
        torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=0)
    binary = paste_masks(masks, boxes, (60, 70), threshold=0.5)
    assert binary.dtype == torch.bool and torch.equal(binary, got >= 0.5)


@pytest.mark.parametrize(("mode", "aligned", "min_iou"), [("detectron2", True, 0.95), ("torchvision", False, 0.9)])
def test_crop_resize_paste_round_trip_keeps_blobs(mode, aligned, min_iou):
    """Random blobs -> their box's 28x28 target -> pasted back: mean IoU above 0.95 (our default,
    detectron2's convention); torchvision's integer boxes lose more on these small blobs."""
    g = torch.Generator().manual_seed(4)
    h, w = 96, 128
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    blobs = []
    for _ in range(20):
        cy, cx = float(torch.rand(1, generator=g)) * 60 + 18, float(torch.rand(1, generator=g)) * 90 + 19
        ry, rx = float(torch.rand(1, generator=g)) * 14 + 6, float(torch.rand(1, generator=g)) * 14 + 6
        blobs.append(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
    masks = torch.stack(blobs)
    ys, xs = masks.any(2), masks.any(1)
    boxes = torch.stack([xs.float().argmax(1), ys.float().argmax(1),
                         w - xs.flip(1).float().argmax(1), h - ys.flip(1).float().argmax(1)], 1).float()
    targets = crop_mask_targets(masks, boxes, torch.arange(20), 28, aligned=aligned, threshold=None)
    pasted = paste_masks(targets, boxes, (h, w), 0.5, mode)
    iou = (pasted & masks).flatten(1).sum(1) / (pasted | masks).flatten(1).sum(1)
    assert float(iou.mean()) > min_iou


def test_paste_of_no_masks():
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 12))
    assert out.shape == (0, 10, 12) and out.dtype == torch.bool


def test_mask_targets_from_windows_around_the_boxes_equal_full_masks():
    g = torch.Generator().manual_seed(5)
    h, w = 70, 90
    masks = torch.zeros(6, h, w, dtype=torch.bool)
    for i in range(6):  # blobs, two touching the image border
        y0, x0 = (0, 0) if i == 0 else (int(torch.randint(0, h - 20, (1,), generator=g)), int(torch.randint(0, w - 25, (1,), generator=g)))
        y1, x1 = (h, 30) if i == 1 else (y0 + 20, x0 + 25)
        masks[i, y0:y1, x0:x1] = torch.rand(y1 - y0, x1 - x0, generator=g) > 0.3
    ys, xs = masks.any(2), masks.any(1)
    mask_boxes = torch.stack([xs.float().argmax(1), ys.float().argmax(1), w - xs.flip(1).float().argmax(1),
                              h - ys.flip(1).float().argmax(1)], 1).float()
    index = torch.randint(0, 6, (15,), generator=g)
    rois = mask_boxes[index] + torch.randn(15, 4, generator=g) * 4
    for aligned in (True, False):
        full = crop_mask_targets(masks, rois, index, 28, aligned, None)
        windowed = crop_mask_targets(masks, rois, index, 28, aligned, None, mask_boxes=mask_boxes)
        torch.testing.assert_close(windowed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["detectron2", "torchvision"])
def test_batched_paste_equals_pasting_each_image(mode):
    from lightning_seg.ops.mask_paste import paste_masks_batched

    g = torch.Generator().manual_seed(6)
    sizes = [(50, 70), (90, 40), (30, 30)]
    counts = [7, 0, 5]
    masks = torch.rand(sum(counts), 28, 28, generator=g)
    boxes = torch.cat([boxes_in(c, h, w, g, 60) for c, (h, w) in zip(counts, sizes)])
    index = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    got = paste_masks_batched(masks, boxes, index, sizes, None, mode, max_bytes=4 * 40 * 40 * 3)
    start = 0
    for c, size, out in zip(counts, sizes, got):
        assert out.shape == (c, *size)
        torch.testing.assert_close(out, paste_masks(masks[start:start + c], boxes[start:start + c], size, None, mode))
        start += c
