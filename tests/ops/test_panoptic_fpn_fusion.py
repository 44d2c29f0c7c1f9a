"""Panoptic FPN fusion against a detectron2-style loop written here."""

from __future__ import annotations

import torch

from lightning_seg.ops.panoptic_fpn_fusion import panoptic_fpn_fusion

K = 6
THINGS = [0, 1, 2]


def _loop(masks, scores, labels, sem, overlap, stuff_area, score_thr):
    pan = torch.zeros(sem.shape, dtype=torch.int32)
    infos, seg = [], 0
    for j in torch.argsort(-scores, stable=True).tolist():
        if scores[j] < score_thr:
            break
        m = masks[j]
        area = int(m.sum())
        if area == 0:
            continue
        inter = int((m & (pan > 0)).sum())
        if inter / area > overlap:
            continue
        if inter > 0:
            m = m & (pan == 0)
        seg += 1
        pan[m] = seg
        infos.append((seg, int(labels[j]), True))
    for c in torch.unique(sem).tolist():
        if c in THINGS or c < 0 or c >= K:
            continue
        m = (sem == c) & (pan == 0)
        if int(m.sum()) < stuff_area:
            continue
        seg += 1
        pan[m] = seg
        infos.append((seg, c, False))
    return pan, infos


def test_fusion_equals_loop():
    g = torch.Generator().manual_seed(0)
    insts, sems, refs = [], [], []
    for n in (9, 0, 5):
        masks = torch.zeros(n, 40, 50, dtype=torch.bool)
        for j in range(n):
            y, x = torch.randint(0, 30, (2,), generator=g).tolist()
            masks[j, y : y + 12, x : x + 15] = True
        if n:
            masks[-1] = False  # an empty mask is skipped
        scores = torch.rand(n, generator=g)
        labels = torch.randint(0, 3, (n,), generator=g)
        sem = torch.randint(0, K, (40, 50), generator=g)
        sem[:10] = 255  # void
        insts.append({"masks": masks, "scores": scores, "labels": labels})
        sems.append(sem)
        refs.append(_loop(masks, scores, labels, sem, 0.5, 250, 0.3))
    out = panoptic_fpn_fusion(insts, sems, THINGS, K, overlap_threshold=0.5, stuff_area_threshold=250,
                              instance_score_threshold=0.3)
    for o, (pan, infos) in zip(out, refs):
        assert torch.equal(o["panoptic_seg"], pan)
        assert [(s["id"], s["category_id"], s["isthing"]) for s in o["segments_info"]] == infos
    assert any(not s["isthing"] for s in out[1]["segments_info"])
    assert sum(s["isthing"] for s in out[0]["segments_info"]) >= 3
