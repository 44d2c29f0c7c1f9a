"""MaX-DeepLab's panoptic inference (deeplab2's pixel-wise post-processing), on the device.

Rules: a slot is kept when its best real class has probability >= ``class_threshold`` (0.7); at
every pixel the mask logits of the kept slots are turned into a softmax over those slots, and the
pixel goes to the best kept slot when that probability exceeds ``pixel_threshold`` (0.4) and the
best slot over all slots is a kept one (else void). Thing segments are single slots, stuff
segments gather the slots of one class; thing segments under ``thing_area`` (100) pixels and stuff
segments under ``stuff_area`` (1600) become void (their pixels are not re-assigned). Areas are
counted at the output size. The logits are brought to the output size as the other
mask-classification ops do (bilinear to the padded input, crop, bilinear to the output, band by
band) rather than deeplab2's align-corners resize of ``4k + 1`` crops. Semantic maps follow
deeplab2's rule too (:func:`max_deeplab_semantic_inference`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..structures import PanopticPrediction
from .mask_inference import (
    _image_sizes,
    _taps,
    band_budget_for,
    panoptic_predictions,
    resized_argmax,
    segment_rows,
    stuff_merged_segments,
    thing_mask,
)
from .mask_resize import resize_height, resize_width, row_bands

__all__ = ["max_deeplab_panoptic_inference", "max_deeplab_semantic_inference"]

Size = tuple[int, int]


@torch.no_grad()
def max_deeplab_panoptic_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    thing_classes: torch.Tensor | Sequence[int] | Sequence[bool],
    padded_size: Size | None = None,
    image_sizes: Sequence[Size] | None = None,
    orig_sizes: Sequence[Size] | None = None,
    class_threshold: float = 0.7,
    pixel_threshold: float = 0.4,
    thing_area: int = 100,
    stuff_area: int = 1600,
    band_budget: int | None = None,
) -> list[PanopticPrediction]:
    """Panoptic segmentation of every image of a batch by MaX-DeepLab's rules (module docstring).

    Args:
        pred_logits: float ``[B, N, K+1]`` slot class logits (last = void).
        pred_masks: float ``[B, N, h, w]`` mask logits over the padded input (softmax over ``N``).
        thing_classes: contiguous thing ids or a bool ``[K]`` vector.
        padded_size: ``(Hp, Wp)`` (default: the mask size); image_sizes: each image's ``(H, W)``
            inside it; orig_sizes: ``(H0, W0)`` of each output (default: ``image_sizes``).
        class_threshold, pixel_threshold: slot class and pixel mask confidences.
        thing_area, stuff_area: smallest kept thing / stuff segment, in output pixels.
        band_budget: elements per band of output rows (see :func:`~lightning_seg.ops.resized_argmax`).

    Returns:
        ``B`` :class:`~lightning_seg.structures.PanopticPrediction`: int32 ``[H0, W0]`` ids from 1
        (0 = void), segments ordered by their first slot; a segment's score is its best slot's
        class probability.
    """
    padded, images, origs = _image_sizes(pred_masks, padded_size, image_sizes, orig_sizes)
    b, n, k1 = pred_logits.shape
    k = k1 - 1
    dev = pred_masks.device
    if band_budget is None:
        band_budget = band_budget_for(dev, 1 << 20)
    is_thing = thing_mask(thing_classes, k, dev)
    scores, labels = pred_logits.float().softmax(-1)[..., :k].max(-1)  # [B, N]
    keep = scores >= class_threshold
    maps, rows = [], []
    # one image at a time: each has its own output size (the ops of lightning_seg.ops.mask_inference do the same)
    for i in range(b):
        h0, w0 = origs[i]
        alive = torch.nonzero(keep[i]).squeeze(1)
        m = alive.numel()
        if m == 0:
            maps.append(torch.zeros(h0, w0, dtype=torch.int32, device=dev))
            continue
        owner = torch.empty(h0, w0, dtype=torch.long, device=dev)  # index into alive, -1 = void
        ty, tx = _taps(pred_masks, padded, images[i], origs[i])
        wide = resize_width(pred_masks[i].float(), tx)  # [N, h, W0]
        for band in row_bands(h0, n * w0, band_budget):
            logit = resize_height(wide, ty, band)  # [N, r, W0]
            best_all = logit.max(0).values
            kl = logit[alive]
            best, idx = kl.max(0)
            confidence = 1.0 / torch.exp(kl - best).sum(0)  # softmax over the kept slots at the argmax
            ok = (confidence > pixel_threshold) & (best >= best_all)
            owner[band] = torch.where(ok, idx, -1)
        lab = labels[i, alive]
        seg = stuff_merged_segments(lab, is_thing, k)
        seg_map = torch.where(owner >= 0, seg[owner.clamp(min=0)], -1)
        area = torch.bincount(seg_map[seg_map >= 0], minlength=m)
        is_rep = seg == torch.arange(m, device=dev)
        limit = torch.where(is_thing[lab], thing_area, stuff_area)
        survives = is_rep & (area >= limit) & (area > 0)
        new_id = torch.cumsum(survives.long(), 0) * survives
        maps.append(torch.where(seg_map >= 0, new_id[seg_map.clamp(min=0)], 0).to(torch.int32))
        rows.append(segment_rows(i, seg, new_id, lab, is_thing, scores[i, alive], survives))
    return panoptic_predictions(maps, rows)


@torch.no_grad()
def max_deeplab_semantic_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    padded_size: Size | None = None,
    image_sizes: Sequence[Size] | None = None,
    orig_sizes: Sequence[Size] | None = None,
    band_budget: int | None = None,
) -> list[torch.Tensor]:
    """Per-pixel class map by deeplab2's rule (its panoptic post-processing with every threshold
    and area limit at 0): each pixel takes the best real class of the slot of largest mask logit.

    Args:
        pred_logits: float ``[B, N, K+1]``; pred_masks: float ``[B, N, h, w]``.
        padded_size, image_sizes, orig_sizes, band_budget: as :func:`max_deeplab_panoptic_inference`.

    Returns:
        ``B`` int64 ``[H0, W0]`` class maps.
    """
    padded, images, origs = _image_sizes(pred_masks, padded_size, image_sizes, orig_sizes)
    if band_budget is None:
        band_budget = band_budget_for(pred_masks.device, 1 << 20)
    slot_class = pred_logits.float()[..., :-1].argmax(-1)  # [B, N]
    out = []
    for i in range(pred_masks.shape[0]):
        owner = resized_argmax(pred_masks[i], padded, images[i], origs[i], band_budget)
        out.append(slot_class[i][owner])
    return out
