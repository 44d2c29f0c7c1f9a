"""SOLO inference steps against a transcription of mmdetection's SOLOv2 prediction, per image."""

from __future__ import annotations

import torch
import torch.nn as nn

from lightning_seg.ops.solo_inference import maskness, points_nms, solo_candidates

GRIDS = (12, 9, 6)
STRIDES = (8, 16, 32)


def mmdet_points_nms(heat, kernel=2):
    hmax = nn.functional.max_pool2d(heat, (kernel, kernel), stride=1, padding=1)
    keep = (hmax[:, :, :-1, :-1] == heat).float()
    return heat * keep


def test_points_nms_equals_neighbourhood_loop():
    g = torch.Generator().manual_seed(0)
    heat = torch.rand(2, 3, 7, 7, generator=g)
    heat[0, 0, 2, 2] = heat[0, 0, 2, 3] = 0.99  # a tie: both stay (max pooling compares values)
    got = points_nms(heat)
    for b, k, i, j in torch.cartesian_prod(*(torch.arange(n) for n in heat.shape)).tolist():
        window = heat[b, k, max(i - 1, 0): i + 1, max(j - 1, 0): j + 1]
        want = heat[b, k, i, j] if heat[b, k, i, j] == window.max() else 0.0
        assert float(got[b, k, i, j]) == float(want)
    assert torch.equal(got, mmdet_points_nms(heat))


def test_candidates_and_maskness_equal_mmdetection():
    g = torch.Generator().manual_seed(1)
    b, k = 3, 4
    logits = [torch.randn(b, k, s, s, generator=g) * 2 for s in GRIDS]
    cand = solo_candidates(logits, STRIDES, score_threshold=0.6)
    masks = torch.rand(cand.cell.numel(), 20, 24, generator=g) ** 2
    masks[::2] *= 0.55  # few pixels above 0.5: some masks no larger than their stride
    keep, mness = maskness(masks, cand.strides)
    for i in range(b):
        # the reference: flatten the levels, threshold, strides by level interval
        cls_scores = torch.cat([mmdet_points_nms(x[i: i + 1].sigmoid()).permute(0, 2, 3, 1).reshape(-1, k)
                                for x in logits])
        score_mask = cls_scores > 0.6
        inds = score_mask.nonzero()
        lvl_interval = torch.tensor(GRIDS).pow(2).cumsum(0)
        strides = torch.ones(int(lvl_interval[-1]))
        strides[: lvl_interval[0]] *= STRIDES[0]
        for lvl in range(1, len(GRIDS)):
            strides[lvl_interval[lvl - 1]: lvl_interval[lvl]] *= STRIDES[lvl]
        mine = cand.image_index == i
        assert torch.equal(cand.cell[mine], inds[:, 0]) and torch.equal(cand.labels[mine], inds[:, 1])
        assert torch.equal(cand.scores[mine], cls_scores[score_mask])
        assert torch.equal(cand.strides[mine], strides[inds[:, 0]])
        mask_preds = masks[mine]
        binary = mask_preds > 0.5
        sum_masks = binary.sum((1, 2)).float()
        ref_keep = sum_masks > strides[inds[:, 0]]
        assert torch.equal(keep[mine], ref_keep)
        ref_mness = (mask_preds * binary).sum((1, 2)) / sum_masks
        torch.testing.assert_close(mness[mine][ref_keep], ref_mness[ref_keep])
    assert cand.cell.numel() > 20 and keep.any() and not keep.all()
