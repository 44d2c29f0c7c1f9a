"""``ops.detr_panoptic_inference`` against HF's ``DetrImageProcessor.post_process_panoptic_segmentation``.

The two follow different rules in general; they give the same panoptic map when:

* the output size is the padded input size and no image is padded (``image_size == padded_size
  == orig_size``): ours resizes the mask logits to the padded input, crops the image and
  resizes the crop to the output (a no-op here), HF resizes straight to ``target_sizes``
  ignoring padding, so with padding or another output size the two resamplings differ;
* ``threshold`` is the same and ``label_ids_to_fuse`` is the set of stuff classes (HF knows no
  things and stuff, only classes whose queries are fused);
* the kept queries' class scores are equal: HF multiplies each mask probability by the query's
  score before the pixel argmax, DETR (and ours) take the argmax of the mask logits;
* the argmax agrees although ours interpolates logits and HF probabilities: the kept queries'
  mask logits take only two values (``HI`` on the pixels a query owns, ``LO`` elsewhere), so at
  every output pixel both interpolations are the same increasing affine function of the
  bilinear weight of the owned pixels, whose maximum is never tied at a 4x upsampling
  (the weights are odd multiples of 1/8 per axis);
* no kept query is dropped: ours drops segments of at most ``min_area`` pixels and re-runs the
  argmax without them, HF drops a query whose won area is not ``> overlap_mask_area_threshold``
  of its area of ``score * prob >= mask_threshold`` and leaves its pixels 0; here every kept query
  owns a 2x2 block of mask pixels (16 output pixels of its own) and, its pixels of ``prob >= 0.5``
  being exactly those of bilinear weight ``> 1/2``, wins all of them (ratio >= 1);
* a repeated stuff class comes right after its first query or after other repeats: HF sets its
  running segment id back to the fused segment's and numbers the next new segment from there,
  so a new segment after a repeat of an older one reuses an existing id.

Beyond the map, HF lists one ``segments_info`` entry per query (fused ones share the id, each
with its query's score rounded to 6 digits) where ours lists one per segment with the best score;
and where no query is kept HF returns a float map of -1 and ours an int32 map of 0 (void).
"""

from __future__ import annotations

import pytest
import torch

from lightning_seg.ops import detr_panoptic_inference

transformers = pytest.importorskip("transformers", reason="HF transformers (the reference extra) is not installed")

K = 6
THINGS = [0, 1, 2]
STUFF = {3, 4, 5}
Q = 15
MASK = (16, 20)
OUT = (64, 80)  # DETR's masks are at 1/4 of the input
HI, LO = 8.0, -8.0
THRESHOLD = 0.85
# per image: (query, class) of the queries that pass, in query order
KEPT = [
    [(1, 0), (4, 3), (6, 3), (9, 0), (12, 5), (13, 5)],  # fused stuff, two instances of thing 0
    [(0, 1), (3, 2), (7, 1), (14, 2)],  # things only
    [],  # nothing passes
]


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits float ``[B, Q, K+1]`` and mask logits float ``[B, Q, h, w]`` where the rules coincide.

    Queries that do not pass get random logits below the threshold and random masks (neither
    post-processing looks at their masks). A kept query's logits are 0 but 40 at its class, so
    its score is exactly 1.0 (``exp(-40)`` vanishes next to 1 in float32). Each kept query owns
    random cells of 2x2 mask pixels, at least one of them whole, and single mask pixels scattered
    over the others' cells, so that boundaries and junctions of every shape occur.
    """
    g = torch.Generator().manual_seed(0)
    b = len(KEPT)
    logits = torch.randn(b, Q, K + 1, generator=g)
    masks = torch.randn(b, Q, *MASK, generator=g) * 4
    ch, cw = MASK[0] // 2, MASK[1] // 2
    for i, kept in enumerate(KEPT):
        if not kept:
            continue
        queries = torch.tensor([q for q, _ in kept])
        n = len(kept)
        cells = torch.randint(0, n, (ch * cw,), generator=g)
        own = torch.randperm(ch * cw, generator=g)[:n]
        cells[own] = torch.arange(n)
        owner = cells.view(ch, cw).repeat_interleave(2, 0).repeat_interleave(2, 1)
        stray = torch.rand(*MASK, generator=g) < 0.08
        owner = torch.where(stray, torch.randint(0, n, MASK, generator=g), owner)
        for j, cell in enumerate(own.tolist()):  # strays spare one whole cell of every query
            y, x = 2 * (cell // cw), 2 * (cell % cw)
            owner[y : y + 2, x : x + 2] = j
        for q, c in kept:
            logits[i, q] = 0.0
            logits[i, q, c] = 40.0
        masks[i, queries] = torch.where(owner[None] == torch.arange(n)[:, None, None], HI, LO)
    return logits, masks


def _hf(logits: torch.Tensor, masks: torch.Tensor) -> list[dict]:
    from transformers import DetrImageProcessor
    from transformers.models.detr.modeling_detr import DetrSegmentationOutput

    processor = DetrImageProcessor()
    outputs = DetrSegmentationOutput(logits=logits.clone(), pred_masks=masks.clone())
    return processor.post_process_panoptic_segmentation(
        outputs, threshold=THRESHOLD, mask_threshold=0.5, overlap_mask_area_threshold=0.8,
        label_ids_to_fuse=STUFF, target_sizes=[OUT] * logits.shape[0])


def _relabelling(ours: torch.Tensor, theirs: torch.Tensor) -> dict[int, int]:
    """Map of our segment ids to HF's, asserting the two int maps ``[H, W]`` partition the pixels
    alike (a bijection of ids, 0 on both sides for the same pixels)."""
    pairs = torch.unique(torch.stack([ours.long().flatten(), theirs.long().flatten()], 1), dim=0)
    mapping = {int(a): int(b) for a, b in pairs}
    assert len(mapping) == len(pairs), "one of our segments covers several of HF's"
    assert len(set(mapping.values())) == len(mapping), "one of HF's segments covers several of ours"
    assert mapping.get(0, 0) == 0 and {v: k for k, v in mapping.items()}.get(0, 0) == 0, "void differs"
    return mapping


def test_detr_panoptic_inference_equals_hf_where_the_rules_coincide():
    logits, masks = _inputs()
    scores, labels = logits.softmax(-1).max(-1)
    passing = (labels != K) & (scores > THRESHOLD)
    for i, kept in enumerate(KEPT):  # the construction does what it claims
        assert passing[i].nonzero().flatten().tolist() == [q for q, _ in kept]
        assert all(float(scores[i, q]) == 1.0 for q, _ in kept)

    ours = detr_panoptic_inference(logits, masks, THINGS, OUT, [OUT] * len(KEPT), [OUT] * len(KEPT),
                                   threshold=THRESHOLD, min_area=4)
    theirs = _hf(logits, masks)

    for i, kept in enumerate(KEPT):
        seg, info = ours[i]["panoptic_seg"], ours[i]["segments_info"]
        hf_seg, hf_info = theirs[i]["segmentation"], theirs[i]["segments_info"]
        assert tuple(seg.shape) == tuple(hf_seg.shape) == OUT
        if not kept:
            # HF marks "no segment" with -1 (float), ours with void 0
            assert info == [] and hf_info == []
            assert bool((seg == 0).all()) and bool((hf_seg == -1).all())
            continue
        mapping = _relabelling(seg, hf_seg)
        # HF lists every query; fused ones repeat their segment's id
        hf_segments: dict[int, tuple[int, bool, float]] = {}
        for s in hf_info:
            label, fused, score = hf_segments.get(s["id"], (s["label_id"], s["was_fused"], 0.0))
            assert (label, fused) == (s["label_id"], s["was_fused"])
            hf_segments[s["id"]] = (label, fused, max(score, s["score"]))
        assert len(hf_info) == len(kept)  # no query was dropped by HF
        assert len(info) == len(hf_segments) == len({(q, c) if c in THINGS else c for q, c in kept})
        for s in info:
            label, fused, score = hf_segments[mapping[s["id"]]]
            assert s["category_id"] == label
            assert s["isthing"] == (not fused)
            assert s["score"] == pytest.approx(score, abs=1e-6)
        assert set(mapping) == {s["id"] for s in info}  # every pixel has a segment on both sides
