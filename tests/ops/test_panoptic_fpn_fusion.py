"""Panoptic FPN fusion against loops written here: detectron2's ``combine_semantic_and_instance_outputs``
(torch) and panopticapi's ``combine_semantic_and_instance_predictions`` rules (numpy, with the
union of used masks as panopticapi keeps it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_seg.ops.panoptic_fpn_fusion import panoptic_fpn_fusion, paste_in_score_order

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


def _panopticapi(masks, scores, labels, sem, overlap, stuff_area, score_thr, things, k):
    """panopticapi's rules: instances below the confidence threshold dropped, the rest sorted by
    score (Python's stable sort), each compared with the union of the used (full) masks; stuff
    from one binary mask per class in class order. Segment ids are sequential here instead of
    panopticapi's colour ids."""
    masks, sem = np.asarray(masks), np.asarray(sem)
    kept = [j for j in range(len(scores)) if float(scores[j]) >= score_thr]
    kept = sorted(kept, key=lambda j: -float(scores[j]))
    pan = np.zeros(sem.shape, dtype=np.int32)
    used = None
    infos, seg = [], 0
    for j in kept:
        m = masks[j]
        area = int(m.sum())
        if area == 0:
            continue
        if used is None:
            inter, used = 0, m.copy()
        else:
            inter = int(np.logical_and(used, m).sum())
        if inter / area > overlap:
            continue
        used = np.logical_or(used, m)
        if inter != 0:
            m = np.logical_and(pan == 0, m)
        seg += 1
        pan[m] = seg
        infos.append((seg, int(labels[j]), True))
    for c in range(k):
        if c in things:
            continue
        left = np.logical_and(pan == 0, sem == c)
        if left.sum() < stuff_area:
            continue
        seg += 1
        pan[left] = seg
        infos.append((seg, c, False))
    return pan, infos


def _random_image(g, n, h, w, chain=False):
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for j in range(n):
        if chain:
            # each rectangle 60 % over the previous one: rejections cascade down the chain
            x = 4 * j
            masks[j, 2: h - 2, x: x + 10] = True
        else:
            y, x = torch.randint(0, h - 4, (2,), generator=g).tolist()
            dy, dx = torch.randint(2, max(3, h // 2), (2,), generator=g).tolist()
            masks[j, y: y + dy, x: x + dx] = True
            if j % 3 == 0:  # non-rectangular masks
                masks[j] &= torch.rand(h, w, generator=g) < 0.7
    if n > 2 and not chain:
        masks[1] = False  # an empty mask is skipped
    # ties in the scores keep the input order
    scores = torch.randint(0, 12, (n,), generator=g).float() / 11
    if chain:
        scores = torch.linspace(1.0, 0.6, n)
    labels = torch.randint(0, 3, (n,), generator=g)
    # stuff of several region sizes, thing classes and void in the semantic map
    coarse = torch.randint(0, K, (h // 8 + 1, w // 8 + 1), generator=g)
    sem = coarse.repeat_interleave(8, 0).repeat_interleave(8, 1)[:h, :w].clone()
    fine = torch.rand(h, w, generator=g) < 0.1
    sem[fine] = torch.randint(0, K, (int(fine.sum()),), generator=g)
    sem[: h // 10] = 255
    sem[-1, :5] = -1
    return masks, scores, labels, sem


@pytest.mark.parametrize("seed", range(8))
def test_fusion_equals_detectron2_and_panopticapi_loops(seed):
    g = torch.Generator().manual_seed(seed)
    insts, sems, refs, apis = [], [], [], []
    # sizes with H * W not a multiple of 8, an image without instances, a cascade of rejections
    for n, h, w, chain in ((12, 40, 50, False), (0, 30, 33, False), (30, 37, 41, False), (9, 20, 60, True)):
        masks, scores, labels, sem = _random_image(g, n, h, w, chain)
        if seed % 2:
            sem = sem.clamp(0, K - 1)  # a model's argmax: no void
        insts.append({"masks": masks, "scores": scores, "labels": labels})
        sems.append(sem)
        refs.append(_loop(masks, scores, labels, sem, 0.5, 30, 0.3))
        apis.append(_panopticapi(masks.numpy(), scores.numpy(), labels.numpy(), sem.numpy(), 0.5, 30, 0.3, THINGS, K))
    out = panoptic_fpn_fusion(insts, sems, THINGS, K, overlap_threshold=0.5, stuff_area_threshold=30,
                              instance_score_threshold=0.3)
    for o, (pan, infos), (api_pan, api_infos) in zip(out, refs, apis):
        assert o["panoptic_seg"].dtype == torch.int32
        assert torch.equal(o["panoptic_seg"], pan)
        assert np.array_equal(o["panoptic_seg"].numpy(), api_pan)
        got = [(s["id"], s["category_id"], s["isthing"]) for s in o["segments_info"]]
        assert got == infos == api_infos
    # the inputs exercise what they are meant to
    assert any(not s["isthing"] for s in out[1]["segments_info"])
    assert [s["id"] for s in out[3]["segments_info"] if s["isthing"]] == [1, 2, 3, 4, 5]  # every other link


def test_many_instances_use_wider_lanes():
    """More than 127 instances in one image: two-byte lanes give the same answer."""
    g = torch.Generator().manual_seed(3)
    masks, scores, labels, sem = _random_image(g, 150, 64, 61)
    out = panoptic_fpn_fusion([{"masks": masks, "scores": scores, "labels": labels}], [sem], THINGS, K,
                              overlap_threshold=0.4, stuff_area_threshold=10, instance_score_threshold=0.0)
    pan, infos = _loop(masks, scores, labels, sem, 0.4, 10, 0.0)
    assert torch.equal(out[0]["panoptic_seg"], pan)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in out[0]["segments_info"]] == infos
    assert sum(s["isthing"] for s in out[0]["segments_info"]) > 20


def test_paste_in_score_order_owners_and_scores():
    g = torch.Generator().manual_seed(5)
    masks, scores, _, _ = _random_image(g, 20, 32, 32)
    owners, accepted = paste_in_score_order([masks], [scores], 0.5, 0.25)
    # the loop: owner index per pixel, first accepted in score order
    ref = torch.full((32, 32), -1, dtype=torch.int64)
    ref_acc = torch.zeros(20, dtype=torch.bool)
    for j in torch.argsort(-scores, stable=True).tolist():
        if scores[j] < 0.25:
            break
        m = masks[j]
        area = int(m.sum())
        if area == 0 or int((m & (ref >= 0)).sum()) > 0.5 * area:
            continue
        ref_acc[j] = True
        ref[m & (ref < 0)] = j
    assert torch.equal(owners[0], ref)
    assert torch.equal(accepted[0], ref_acc)
    assert 0 < int(ref_acc.sum()) < 20


def test_mismatched_shapes_are_named():
    with pytest.raises(ValueError, match="image 0"):
        panoptic_fpn_fusion([{"masks": torch.zeros(1, 4, 4, dtype=torch.bool), "scores": torch.ones(1),
                              "labels": torch.zeros(1, dtype=torch.int64)}], [torch.zeros(5, 4, dtype=torch.int64)],
                            THINGS, K)


def test_overlap_rule_is_the_references_division():
    """63 of 90 pixels covered at threshold 0.7: detectron2 keeps it (63 / 90 is not > 0.7),
    though 63 > 0.7 * 90 in floating point."""
    assert 63 > 0.7 * 90 and not 63 / 90 > 0.7
    a = torch.zeros(1, 10, 20, dtype=torch.bool)
    a[0, :, :9] = True  # 90 pixels
    b = torch.zeros(1, 10, 20, dtype=torch.bool)
    b[0, :7, :9] = True  # 63 of them
    masks = torch.cat([b, a])  # b first in score order
    scores = torch.tensor([0.9, 0.8])
    _, accepted = paste_in_score_order([masks], [scores], 0.7)
    assert accepted[0].tolist() == [True, True]
    pan, _ = _loop(masks, scores, torch.zeros(2, dtype=torch.int64), torch.full((10, 20), 255), 0.7, 1, 0.0)
    assert sorted(torch.unique(pan).tolist()) == [0, 1, 2]


def test_masks_pasted_into_one_buffer_and_empty_images():
    """Masks as pasted for a batch (views at any offset of one buffer), mixed sizes, and an image
    of zero height."""
    from lightning_seg.ops.mask_paste import paste_masks_batched

    g = torch.Generator().manual_seed(7)
    sizes = [(51, 37), (64, 64), (5, 5)]
    n = [43, 9, 3]
    index = torch.repeat_interleave(torch.arange(3), torch.tensor(n))
    xy = torch.rand(sum(n), 2, generator=g) * 30
    boxes = torch.cat([xy, xy + torch.rand(sum(n), 2, generator=g) * 20 + 2], 1)
    probs = torch.rand(sum(n), 14, 14, generator=g)
    pasted = paste_masks_batched(probs, boxes, index, sizes, threshold=0.5)
    assert any(p.storage_offset() % 8 for p in pasted)
    scores = [torch.sort(torch.rand(k, generator=g), descending=True)[0] for k in n]
    sems = [torch.randint(0, K, s, generator=g) for s in sizes]
    insts = [{"masks": m, "scores": s, "labels": torch.zeros(len(s), dtype=torch.int64)} for m, s in zip(pasted, scores)]
    out = panoptic_fpn_fusion(insts, sems, THINGS, K, stuff_area_threshold=5, instance_score_threshold=0.2)
    for o, inst, sem in zip(out, insts, sems):
        pan, infos = _loop(inst["masks"], inst["scores"], inst["labels"], sem, 0.5, 5, 0.2)
        assert torch.equal(o["panoptic_seg"], pan)
        assert [(s["id"], s["category_id"], s["isthing"]) for s in o["segments_info"]] == infos
    empty = panoptic_fpn_fusion([{"masks": torch.zeros(2, 0, 3, dtype=torch.bool), "scores": torch.ones(2),
                                  "labels": torch.zeros(2, dtype=torch.int64)}], [torch.zeros(0, 3, dtype=torch.int64)],
                                THINGS, K)
    assert empty[0]["panoptic_seg"].shape == (0, 3) and empty[0]["segments_info"] == []
    with pytest.raises(TypeError, match="bool"):
        paste_in_score_order([torch.ones(1, 2, 2, dtype=torch.uint8)], [torch.ones(1)], 0.5)
