"""MaX-DeepLab's panoptic and semantic inference against per-pixel loops of deeplab2's rules."""

from __future__ import annotations

import pytest
import torch

from lightning_seg.ops import (
    max_deeplab_panoptic_inference,
    max_deeplab_semantic_inference,
)

K, N = 4, 9
THINGS = [0, 1]


def outputs(seed: int, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, N, K + 1, generator=g)
    for n in range(N - 2):  # the last two slots stay below the class threshold
        logits[:, n, (n + 2) % K] += 6.0  # slots 0 and 4 are both stuff class 2: they merge
    masks = torch.randn(b, N, h, w, generator=g) * 3
    return logits, masks


def loop_panoptic(logits, masks, thing_area, stuff_area, class_threshold=0.7, pixel_threshold=0.4):
    """Per pixel: softmax over kept slots, confidence and argmax rules; then the area limits."""
    probs = logits.softmax(-1)[:, :K]
    conf, label = probs.max(-1)
    kept = [n for n in range(N) if conf[n] >= class_threshold]
    h, w = masks.shape[-2:]
    owner = {}
    for y in range(h):
        for x in range(w):
            if not kept:
                continue
            v = masks[:, y, x]
            soft = v[kept].softmax(0)
            j = int(soft.argmax())
            if soft[j] > pixel_threshold and int(v.argmax()) == kept[j]:
                n = kept[j]
                c = int(label[n])
                owner[(y, x)] = ("thing", n) if c in THINGS else ("stuff", c)
    segments = {}
    for px, key in owner.items():
        segments.setdefault(key, set()).add(px)
    out = set()
    for (kind, ident), pixels in segments.items():
        c = int(label[ident]) if kind == "thing" else ident
        if len(pixels) >= (thing_area if kind == "thing" else stuff_area):
            out.add((c, kind == "thing", frozenset(pixels)))
    return out


def as_segments(pred) -> set:
    seg = pred["panoptic_seg"]
    return {(s["category_id"], s["isthing"], frozenset(map(tuple, torch.nonzero(seg == s["id"]).tolist())))
            for s in pred["segments_info"]}


# the smallest thing has 16 pixels and the smallest stuff segment 35: (16, 35) keeps them, (17, 36) drops them
@pytest.mark.parametrize("areas", [(0, 0), (16, 35), (17, 36)])
def test_panoptic_equals_a_per_pixel_loop(areas):
    logits, masks = outputs(0, 3, 12, 16)
    logits[2, :, :K] -= 20.0  # no slot kept in the last image: all void
    preds = max_deeplab_panoptic_inference(logits, masks, THINGS, thing_area=areas[0], stuff_area=areas[1],
                                           band_budget=N * 16 * 5)  # several bands
    for i in range(3):
        want = loop_panoptic(logits[i], masks[i], *areas)
        assert as_segments(preds[i]) == want
        ids = set(torch.unique(preds[i]["panoptic_seg"]).tolist()) - {0}
        assert ids == {s["id"] for s in preds[i]["segments_info"]}
    assert not preds[2]["segments_info"] and (preds[2]["panoptic_seg"] == 0).all()
    if areas == (17, 36):  # some segments were dropped and their pixels left void
        full = max_deeplab_panoptic_inference(logits, masks, THINGS, thing_area=0, stuff_area=0)
        assert len(preds[0]["segments_info"]) < len(full[0]["segments_info"])
        assert (preds[0]["panoptic_seg"] == 0).sum() > (full[0]["panoptic_seg"] == 0).sum()
    for i in range(2):
        info = preds[i]["segments_info"]
        assert {s["isthing"] for s in info} == {True, False}  # things and stuff in each image
        stuff = [s["category_id"] for s in info if not s["isthing"]]
        assert len(set(stuff)) == len(stuff)  # one segment per stuff class


def test_semantic_equals_a_per_pixel_loop():
    logits, masks = outputs(1, 2, 6, 7)
    got = max_deeplab_semantic_inference(logits, masks)
    for i in range(2):
        for y in range(6):
            for x in range(7):
                slot = max(range(N), key=lambda n: float(masks[i, n, y, x]))
                best = max(range(K), key=lambda k: float(logits[i, slot, k]))
                assert int(got[i][y, x]) == best


def test_batched_equals_one_image_at_a_time_at_other_sizes():
    logits, masks = outputs(2, 2, 10, 12)
    sizes = dict(padded_size=(40, 48), image_sizes=[(40, 48), (33, 41)], orig_sizes=[(60, 70), (33, 41)])
    both = max_deeplab_panoptic_inference(logits, masks, THINGS, thing_area=3, stuff_area=10, **sizes)
    for i in range(2):
        one = max_deeplab_panoptic_inference(logits[i : i + 1], masks[i : i + 1], THINGS, thing_area=3,
                                             stuff_area=10, padded_size=(40, 48), image_sizes=[sizes["image_sizes"][i]],
                                             orig_sizes=[sizes["orig_sizes"][i]])[0]
        assert torch.equal(both[i]["panoptic_seg"], one["panoptic_seg"])
        assert both[i]["segments_info"] == one["segments_info"]
        assert tuple(one["panoptic_seg"].shape) == sizes["orig_sizes"][i]
