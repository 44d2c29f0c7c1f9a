"""Semantic / instance / panoptic inference against HF transformers and Mask2Former loops."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lightning_seg.ops.mask_inference import instance_inference, panoptic_inference, semantic_inference

K = 5
THINGS = [0, 1, 2]


def _hf_processor():
    pytest.importorskip("transformers")
    from transformers.models.mask2former.image_processing_mask2former import Mask2FormerImageProcessor

    return Mask2FormerImageProcessor()


def _upsample(masks, padded, image, orig):
    """detectron2's sem_seg_postprocess on upsampled mask logits (reference)."""
    x = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
    x = x[:, : image[0], : image[1]]
    return F.interpolate(x[None], size=orig, mode="bilinear", align_corners=False)[0]


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> dict[int, int]:
    """Assert two id maps are the same partition (0 = void in both); return id mapping a->b."""
    assert a.shape == b.shape
    assert torch.equal(a == 0, b == 0)
    pairs = torch.unique(torch.stack([a.flatten().long(), b.flatten().long()], 1), dim=0)
    assert pairs[:, 0].unique().numel() == pairs.shape[0] == pairs[:, 1].unique().numel()
    return {int(x): int(y) for x, y in pairs.tolist()}


# ----------------------------------------------------------------------------- semantic


def test_semantic_equals_hf_without_resizing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, K + 1, generator=g)
    masks = torch.randn(2, 6, 384, 384, generator=g)
    ours = semantic_inference(logits, masks)
    ref = _hf_processor().post_process_semantic_segmentation(
        SimpleNamespace(class_queries_logits=logits, masks_queries_logits=masks), target_sizes=[(384, 384)] * 2
    )
    for a, b in zip(ours, ref):
        assert (a == b).float().mean() > 0.9999  # float summation order may flip exact ties


def test_semantic_crops_padding_and_resizes_per_image():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, K + 1, generator=g)
    masks = torch.randn(2, 6, 16, 20, generator=g)
    padded, images, origs = (64, 80), [(60, 80), (50, 47)], [(90, 120), (33, 31)]
    ours = semantic_inference(logits, masks, padded, images, origs, band_budget=6 * 120 * 7)
    for i in range(2):
        probs = _upsample(masks[i], padded, images[i], origs[i]).sigmoid()
        ref = torch.einsum("qk,qhw->khw", logits[i].softmax(-1)[:, :-1], probs).argmax(0)
        assert ours[i].shape == origs[i] and ours[i].dtype == torch.int64
        assert (ours[i] == ref).float().mean() > 0.999


def test_semantic_ties_go_to_the_lowest_class_id():
    # Classes 1 and 3 get identical scores everywhere and beat the rest: argmax semantics
    # (first maximal index) must give class 1 at every pixel, whatever the band size.
    logits = torch.full((1, 4, K + 1), -5.0)
    logits[..., 1] = logits[..., 3] = 4.0
    masks = torch.randn(1, 4, 9, 11, generator=torch.Generator().manual_seed(2))
    for budget in (None, (4 + K) * 11, 1 << 24):
        (sem,) = semantic_inference(logits, masks, band_budget=budget)
        assert torch.equal(sem, torch.ones(9, 11, dtype=torch.long))


# ----------------------------------------------------------------------------- instance


def test_instance_equals_hf_without_resizing():
    g = torch.Generator().manual_seed(2)
    q = 6
    logits = torch.randn(2, q, K + 1, generator=g) * 3
    masks = torch.randn(2, q, 48, 48, generator=g) * 4
    masks_hf = F.interpolate(masks, size=(384, 384), mode="bilinear", align_corners=False)
    ours = instance_inference(logits, masks_hf, topk=q, score_threshold=0.3, drop_empty=True)
    ref = _hf_processor().post_process_instance_segmentation(
        SimpleNamespace(class_queries_logits=logits, masks_queries_logits=masks_hf),
        threshold=0.3, target_sizes=[(384, 384)] * 2, return_binary_maps=True,
    )
    for a, r in zip(ours, ref):
        assert len(r["segments_info"]) == a["scores"].numel() > 0
        order = sorted(range(len(r["segments_info"])), key=lambda j: -r["segments_info"][j]["score"])
        assert a["labels"].tolist() == [r["segments_info"][j]["label_id"] for j in order]
        torch.testing.assert_close(a["scores"], torch.tensor([r["segments_info"][j]["score"] for j in order]),
                                   rtol=0, atol=1e-6)
        assert torch.equal(a["masks"], r["segmentation"][order].bool())


def test_instance_equals_mask2former_loop_with_things_only():
    g = torch.Generator().manual_seed(3)
    q = 7
    logits = torch.randn(2, q, K + 1, generator=g) * 2
    masks = torch.randn(2, q, 12, 12, generator=g) * 3
    padded, images, origs = (48, 48), [(48, 40), (30, 44)], [(60, 50), (45, 66)]
    ours = instance_inference(logits, masks, padded, images, origs, topk=10, thing_classes=THINGS)
    for i in range(2):
        scores = logits[i].softmax(-1)[:, :-1]
        top, idx = scores.flatten().topk(10)
        keep = [j for j in range(10) if int(idx[j] % K) in THINGS]
        up = _upsample(masks[i], padded, images[i], origs[i])
        exp_scores, exp_masks = [], []
        for j in keep:
            m = up[int(idx[j] // K)]
            binary = (m > 0).float()
            exp_scores.append(top[j] * (m.sigmoid() * binary).sum() / (binary.sum() + 1e-6))
            exp_masks.append(binary.bool())
        assert ours[i]["labels"].tolist() == [int(idx[j] % K) for j in keep]
        torch.testing.assert_close(ours[i]["scores"], torch.stack(exp_scores), rtol=1e-4, atol=1e-5)
        agree = (ours[i]["masks"] == torch.stack(exp_masks)).float().mean()
        assert ours[i]["masks"].shape == (len(keep), *origs[i]) and agree > 0.999


# ----------------------------------------------------------------------------- panoptic


def _m2f_panoptic_loop(mask_cls, mask_pred, thing_ids, thr=0.8, overlap=0.8):
    """Mask2Former's panoptic_inference, one query at a time."""
    scores, labels = mask_cls.softmax(-1).max(-1)
    keep = labels.ne(mask_cls.shape[-1] - 1) & (scores > thr)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep].sigmoid()
    prob_masks = cur_scores.view(-1, 1, 1) * cur_masks
    pan = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32)
    infos, seg, stuff_memory = [], 0, {}
    if cur_masks.shape[0] == 0:
        return pan, infos
    ids = prob_masks.argmax(0)
    for k in range(cur_classes.shape[0]):
        c = int(cur_classes[k])
        isthing = c in thing_ids
        mask_area = int((ids == k).sum())
        original_area = int((cur_masks[k] >= 0.5).sum())
        mask = (ids == k) & (cur_masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap:
                continue
            if not isthing:
                if c in stuff_memory:
                    pan[mask] = stuff_memory[c]
                    continue
                stuff_memory[c] = seg + 1
            seg += 1
            pan[mask] = seg
            infos.append({"id": seg, "isthing": isthing, "category_id": c})
    return pan, infos


def _blob_masks(g, b, q, size, blob):
    """Confident rectangular blobs over a confident background, so segments survive."""
    masks = torch.randn(b, q, size, size, generator=g).clamp(-1, 1) * 2 - 3
    for i in range(b):
        for j in range(q):
            y, x = torch.randint(0, size - blob, (2,), generator=g).tolist()
            masks[i, j, y : y + blob - 2 + j % 4, x : x + blob] += 8
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_panoptic_equals_mask2former_loop(seed):
    g = torch.Generator().manual_seed(seed)
    q = 10
    logits = torch.randn(2, q, K + 1, generator=g) * 4
    logits[0, :2] = torch.tensor([0, 0, 0, 9.0, 0, 0])  # two queries of one stuff class merge
    masks = _blob_masks(g, 2, q, 24, 8)
    ours = panoptic_inference(logits, masks, THINGS, object_mask_threshold=0.5)
    for b in range(2):
        pan, infos = _m2f_panoptic_loop(logits[b], masks[b], THINGS, thr=0.5)
        assert len(infos) >= 2
        assert torch.equal(ours[b]["panoptic_seg"], pan)
        got = [{k: s[k] for k in ("id", "isthing", "category_id")} for s in ours[b]["segments_info"]]
        assert got == infos
        assert ours[b]["panoptic_seg"].dtype == torch.int32


def test_panoptic_with_resize_matches_loop_and_empty_image():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 8, K + 1, generator=g) * 4
    logits[1, :, -1] = 50.0  # second image: every query says no-object
    masks = _blob_masks(g, 2, 8, 12, 5)
    padded, images, origs = (48, 48), [(44, 40), (48, 48)], [(70, 61), (20, 20)]
    ours = panoptic_inference(logits, masks, THINGS, padded, images, origs, object_mask_threshold=0.5)
    pan, infos = _m2f_panoptic_loop(logits[0], _upsample(masks[0], padded, images[0], origs[0]), THINGS, thr=0.5)
    assert len(infos) >= 2
    assert (ours[0]["panoptic_seg"] == pan).float().mean() > 0.999
    assert [s["category_id"] for s in ours[0]["segments_info"]] == [s["category_id"] for s in infos]
    assert ours[1]["segments_info"] == [] and not ours[1]["panoptic_seg"].any()
    assert ours[1]["panoptic_seg"].shape == (20, 20)


def test_panoptic_equals_hf_where_rules_coincide():
    """Saturated masks covering every pixel: HF's and Mask2Former's rules then agree."""
    g = torch.Generator().manual_seed(11)
    q = 8
    logits = torch.randn(2, q, K + 1, generator=g) * 0.1
    masks = torch.full((2, q, 384, 384), -12.0)
    for b in range(2):
        masks[b, 0] = 12.0  # a weaker stuff query covers everything behind the blobs
        logits[b, 0, 3] = 1.8
        # Two class-4 blobs fuse. They come last: after a fused segment HF's id counter restarts
        # from the fused id and the next new segment reuses an existing id (an HF defect).
        for j, c in enumerate([0, 1, 2, 3, 0, 4, 4], start=1):
            logits[b, j, c] = 6.0 + j * 0.1
            y, x = torch.randint(0, 300, (2,), generator=g).tolist()
            masks[b, j, y : y + 84, x : x + 60] = 12.0
    ours = panoptic_inference(logits, masks, THINGS, object_mask_threshold=0.5)
    ref = _hf_processor().post_process_panoptic_segmentation(
        SimpleNamespace(class_queries_logits=logits, masks_queries_logits=masks),
        threshold=0.5, label_ids_to_fuse={3, 4}, target_sizes=[(384, 384)] * 2,
    )
    for a, r in zip(ours, ref):
        ids = _same_partition(a["panoptic_seg"], r["segmentation"])
        hf_info = {}
        for s in r["segments_info"]:  # HF lists a fused segment once per query
            prev = hf_info.get(s["id"])
            hf_info[s["id"]] = s if prev is None or s["score"] > prev["score"] else prev
        assert len(a["segments_info"]) == len(hf_info) >= 3
        for s in a["segments_info"]:
            h = hf_info[ids[s["id"]]]
            assert s["category_id"] == h["label_id"] and s["isthing"] == (h["label_id"] in THINGS)
            assert s["score"] == pytest.approx(h["score"], abs=1e-6)


def test_half_precision_inputs_match_float32():
    g = torch.Generator().manual_seed(21)
    logits = torch.randn(1, 6, K + 1, generator=g).half()
    masks = _blob_masks(g, 1, 6, 16, 6).half()
    for fn in (semantic_inference, lambda lg, m: instance_inference(lg, m, topk=5)):
        low, ref = fn(logits, masks), fn(logits.float(), masks.float())
        a, b = low[0], ref[0]
        if isinstance(a, dict):
            assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["labels"], b["labels"])
            torch.testing.assert_close(a["scores"], b["scores"])
        else:
            assert torch.equal(a, b)
    low = panoptic_inference(logits, masks, THINGS, object_mask_threshold=0.3)
    ref = panoptic_inference(logits.float(), masks.float(), THINGS, object_mask_threshold=0.3)
    assert torch.equal(low[0]["panoptic_seg"], ref[0]["panoptic_seg"])


def test_images_with_nothing_selected():
    g = torch.Generator().manual_seed(31)
    logits = torch.randn(2, 4, K + 1, generator=g)
    masks = torch.randn(2, 4, 8, 8, generator=g)
    inst = instance_inference(logits, masks, (32, 32), [(32, 30), (20, 32)], [(16, 15), (10, 16)],
                              score_threshold=1.1)
    assert [r["masks"].shape for r in inst] == [(0, 16, 15), (0, 10, 16)]
    inst = instance_inference(logits, masks, thing_classes=[])
    assert all(r["labels"].numel() == 0 for r in inst)
    pan = panoptic_inference(logits, masks, THINGS, object_mask_threshold=1.0)
    assert all(p["segments_info"] == [] and not p["panoptic_seg"].any() for p in pan)
    with pytest.raises(ValueError, match="not inside the padded size"):
        semantic_inference(logits, masks, (32, 32), [(40, 32), (32, 32)])
