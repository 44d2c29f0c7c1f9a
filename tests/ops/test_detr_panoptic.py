"""``ops.detr_panoptic_inference`` against a per-image, per-query loop of DETR's rules."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_seg.ops import detr_panoptic_inference

K = 5
THINGS = [0, 1, 2]


def reference(logits, masks, padded, image, out, threshold, min_area):
    """DETR's PostProcessPanoptic with the stuff queries of a class kept merged, one image."""
    probs = logits.softmax(-1)
    scores, labels = probs.max(-1)
    alive = [q for q in range(logits.shape[0]) if labels[q] != K and scores[q] > threshold]
    up = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[..., : image[0], : image[1]]
    up = F.interpolate(up, size=out, mode="bilinear", align_corners=False)[0]
    while alive:
        winner = up[alive].argmax(0)
        rep = []
        for j, q in enumerate(alive):
            same = [i for i, p in enumerate(alive) if labels[p] == labels[q]]
            rep.append(j if int(labels[q]) in THINGS else same[0])
        owner = torch.tensor(rep)[winner]
        area = {r: int((owner == r).sum()) for r in set(rep)}
        small = [j for j in range(len(alive)) if area[rep[j]] <= min_area]
        if small:
            alive = [q for j, q in enumerate(alive) if j not in small]
            continue
        reps = sorted(set(rep))
        new_id = {r: n + 1 for n, r in enumerate(reps)}
        ids = torch.tensor([new_id[r] for r in rep])[winner]
        infos = [(new_id[r], int(labels[alive[r]]), int(labels[alive[r]]) in THINGS,
                  max(float(scores[alive[j]]) for j in range(len(alive)) if rep[j] == r)) for r in reps]
        return ids, infos
    return torch.zeros(out, dtype=torch.int64), []


def test_detr_panoptic_inference_equals_the_loop():
    g = torch.Generator().manual_seed(0)
    b, q = 3, 12
    logits = torch.randn(b, q, K + 1, generator=g) * 3
    logits[0, :6, 3] += 8  # several confident queries of stuff class 3 in image 0: one segment
    logits[2, :, K] += 20  # image 2: nothing passes
    masks = torch.randn(b, q, 10, 12, generator=g) * 4
    masks[0, 7] -= 30  # a query that wins no pixel is dropped
    padded, images, outs = (40, 48), [(40, 48), (33, 41), (40, 40)], [(40, 48), (50, 61), (20, 20)]
    got = detr_panoptic_inference(logits, masks, THINGS, padded, images, outs, threshold=0.3, min_area=12)
    for i in range(b):
        want_ids, want_infos = reference(logits[i], masks[i], padded, images[i], outs[i], 0.3, 12)
        seg = got[i]["panoptic_seg"]
        assert seg.dtype == torch.int32 and tuple(seg.shape) == outs[i]
        assert (seg.long() != want_ids).float().mean() < 1e-3
        infos = [(s["id"], s["category_id"], s["isthing"], s["score"]) for s in got[i]["segments_info"]]
        assert [x[:3] for x in infos] == [x[:3] for x in want_infos]
        for (_, _, _, s), (_, _, _, t) in zip(infos, want_infos):
            assert abs(s - t) < 1e-5
    assert len(got[0]["segments_info"]) > 0 and sum(s["category_id"] == 3 for s in got[0]["segments_info"]) == 1
    assert got[2]["segments_info"] == [] and int(got[2]["panoptic_seg"].max()) == 0
