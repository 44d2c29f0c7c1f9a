"""DETR's panoptic inference, on the device.

The rules of DETR's ``PostProcessPanoptic``: queries whose best class is a real class scoring
above ``threshold`` (0.85) are kept; each pixel goes to the kept query of largest mask logit;
the queries of one stuff class form one segment; segments of at most ``min_area`` (4) pixels
are dropped with their queries and the pixels re-assigned among the rest, until none is that
small. Differences from the reference, which resizes with PIL on the CPU per image: the logits
are brought to the output size as detectron2 does (bilinear to the padded input, crop, bilinear
to the output, band by band), so they stay aligned with an image inside a padded batch; and
stuff queries stay merged after small segments are dropped (the reference merges them in its
first pass only). A stuff segment's score is the best of its queries'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..structures import PanopticPrediction
from .mask_inference import (
    panoptic_predictions,
    resized_argmax,
    segment_rows,
    stuff_merged_segments,
    thing_mask,
)

__all__ = ["detr_panoptic_inference"]

Size = tuple[int, int]


@torch.no_grad()
def detr_panoptic_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    thing_classes: torch.Tensor | Sequence[int] | Sequence[bool],
    padded_size: Size,
    image_sizes: Sequence[Size],
    orig_sizes: Sequence[Size],
    threshold: float = 0.85,
    min_area: int = 4,
    band_budget: int | None = None,
) -> list[PanopticPrediction]:
    """DETR's panoptic segmentation of every image of a batch.

    Args:
        pred_logits: float ``[B, Q, K+1]`` (last = no-object).
        pred_masks: float ``[B, Q, h, w]`` mask logits over the padded input.
        thing_classes: contiguous thing ids or a bool ``[K]`` vector.
        padded_size: ``(Hp, Wp)``; image_sizes: ``(H, W)`` of each image inside it;
        orig_sizes: ``(H0, W0)`` of each output.
        threshold: class score a query needs.
        min_area: segments with at most this many pixels are dropped.
        band_budget: elements per band of output rows (see :func:`~lightning_seg.ops.resized_argmax`).

    Returns:
        ``B`` :class:`~lightning_seg.structures.PanopticPrediction` (int32 ``[H0, W0]`` ids from 1, 0 =
        void where no query was kept), segments in query order.
    """
    b, q, k1 = pred_logits.shape
    k = k1 - 1
    is_thing = thing_mask(thing_classes, k, pred_logits.device)
    scores, labels = pred_logits.float().softmax(-1).max(-1)
    keep = (labels != k) & (scores > threshold)
    maps, rows = [], []
    # one image at a time: each has its own output size, and dropping small segments changes the
    # argmax, so each image iterates (one host read per round) until its segments are final
    for i in range(b):
        h0, w0 = orig_sizes[i]
        alive = torch.nonzero(keep[i]).squeeze(1)
        ids = torch.zeros(h0, w0, dtype=torch.int32, device=pred_logits.device)
        while alive.numel():
            lab = labels[i, alive]
            seg = stuff_merged_segments(lab, is_thing, k)
            query = resized_argmax(pred_masks[i, alive], padded_size, image_sizes[i], (h0, w0), band_budget)
            # pixels per segment from pixels per query, without a second pass over the pixels
            per_query = torch.bincount(query.flatten(), minlength=alive.numel())
            area = torch.zeros_like(per_query).scatter_add_(0, seg, per_query)
            small = area[seg] <= min_area
            if bool(small.any()):
                alive = alive[~small]
                continue
            # segment ids 1..S in query order of the segments' representatives
            is_rep = seg == torch.arange(alive.numel(), device=alive.device)
            new_id = torch.cumsum(is_rep.long(), 0) * is_rep
            ids = new_id[seg].to(torch.int32)[query]  # one gather over the pixels
            rows.append(segment_rows(i, seg, new_id, lab, is_thing, scores[i, alive], is_rep))
            break
        maps.append(ids)
    return panoptic_predictions(maps, rows)
