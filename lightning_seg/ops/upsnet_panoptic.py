"""UPSNet's parameter-free panoptic head: panoptic logits from semantic and instance logits, and
their panoptic inference.

Per image, the channels are ``[stuff (S) | instance slots (N) | unknown (1)]`` at the semantic
logits' resolution:

* stuff channel ``j``: the semantic logit of stuff class ``stuff_classes[j]``;
* instance ``i`` (class ``c``, box ``b``): its mask logit resized into ``b`` and pasted (zero
  outside), plus the semantic logit of ``c`` cropped to ``b`` (zero outside); slots beyond an
  image's instances hold ``PAD_LOGIT`` (a finite "minus infinity": softmax gives them nothing
  and bilinear resizing makes no NaN);
* unknown: ``max_c(thing semantic logits) - max_i(cropped semantic logit of instance i)``, as
  UPSNet's code (the second max is 0 for an image without instances, as outside every box);
  with ``with_unknown=False`` (UPSNet when every instance is kept in training) the channel holds
  ``PAD_LOGIT`` and never wins.

Everything is built for the whole batch at once (one batched paste, one gather, one scatter);
no loop runs over instances.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..structures import PanopticPrediction
from .mask_inference import band_budget_for, panoptic_predictions, resized_argmax
from .mask_paste import paste_masks_batched

__all__ = ["PAD_LOGIT", "box_masks", "upsnet_panoptic_logits", "upsnet_panoptic_inference"]

PAD_LOGIT = -1e4
"""Logit of an unused instance slot."""


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Bool ``[D, h, w]``: the pixels whose centre lies in each box (float ``[D, 4]`` xyxy)."""
    h, w = size
    ys = torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5
    in_y = (ys >= boxes[:, 1:2]) & (ys < boxes[:, 3:4])
    in_x = (xs >= boxes[:, 0:1]) & (xs < boxes[:, 2:3])
    return in_y[:, :, None] & in_x[:, None, :]


def upsnet_panoptic_logits(
    semantic_logits: Tensor,
    stuff_classes: Tensor,
    thing_classes: Tensor,
    mask_logits: Tensor,
    boxes: Tensor,
    labels: Tensor,
    image_index: Tensor,
    num_slots: int,
    with_unknown: bool = True,
) -> Tensor:
    """Panoptic logits of a batch (differentiable in the semantic and mask logits).

    Args:
        semantic_logits: float ``[B, K, h, w]`` over all classes.
        stuff_classes: int64 ``[S]`` class ids of the stuff channels.
        thing_classes: int64 ``[T]`` thing class ids (for the unknown logit).
        mask_logits: float ``[D, M, M]`` each instance's mask logits of its class, in box coordinates.
        boxes: float ``[D, 4]`` xyxy in pixels of the ``h x w`` logit map.
        labels: int64 ``[D]`` class ids.
        image_index: int64 ``[D]`` image of each instance, grouped (non-decreasing); an
            image's instances take its slots in this order.
        num_slots: ``N``, at least the largest number of instances of an image.
        with_unknown: compute the unknown channel (else it is ``PAD_LOGIT``).

    Returns:
        float ``[B, S + N + 1, h, w]``.
    """
    b, _, h, w = semantic_logits.shape
    d = mask_logits.shape[0]
    dev = semantic_logits.device
    counts = torch.bincount(image_index, minlength=b)
    slot = torch.arange(d, device=dev) - (torch.cumsum(counts, 0) - counts)[image_index]
    inst = semantic_logits.new_full((b, num_slots, h, w), PAD_LOGIT)
    crop = semantic_logits.new_full((b, num_slots, h, w), PAD_LOGIT)
    if d:
        pasted = paste_masks_batched(mask_logits, boxes, image_index, [(h, w)] * b, threshold=None,
                                     mode="detectron2")
        cropped = semantic_logits[image_index, labels] * box_masks(boxes, (h, w))
        inst = inst.index_put((image_index, slot), torch.cat(pasted).to(cropped.dtype) + cropped)
        crop = crop.index_put((image_index, slot), cropped)
    if with_unknown:
        zero = semantic_logits.new_zeros(b, h, w)
        best = torch.where(counts[:, None, None] > 0, crop.amax(1), zero) if num_slots else zero
        unknown = semantic_logits[:, thing_classes].amax(1) - best
    else:
        unknown = semantic_logits.new_full((b, h, w), PAD_LOGIT)
    return torch.cat([semantic_logits[:, stuff_classes], inst, unknown[:, None]], 1)


@torch.no_grad()
def upsnet_panoptic_inference(
    logits: Tensor,
    counts: Sequence[int],
    stuff_classes: Tensor,
    labels: Sequence[Tensor],
    scores: Sequence[Tensor],
    padded_size: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]],
    out_sizes: Sequence[tuple[int, int]],
    stuff_area_threshold: int = 4096,
    band_budget: int | None = None,
) -> list[PanopticPrediction]:
    """Panoptic results from UPSNet's panoptic logits.

    Each output pixel takes the channel of the largest logit (logits resized as detectron2's
    ``sem_seg_postprocess``, band by band); an instance that wins pixels is a segment, a stuff
    class is one segment when it wins at least ``stuff_area_threshold`` pixels, the unknown
    channel and dropped stuff are void (0).

    Args:
        logits: float ``[B, S + N + 1, h, w]`` from :func:`upsnet_panoptic_logits`.
        counts: instances of each image (its first slots).
        stuff_classes: int64 ``[S]``.
        labels, scores: per image int64 / float ``[n_b]`` of its instances (slot order).
        padded_size: ``(Hp, Wp)`` of the padded input the logits cover.
        image_sizes: per image ``(H, W)`` valid region.
        out_sizes: per image ``(H0, W0)`` of the result.
        stuff_area_threshold: minimum pixels of a stuff segment.
        band_budget: see :func:`~lightning_seg.ops.mask_inference.resized_argmax`.

    Returns:
        ``B`` :class:`PanopticPrediction`: instance segments first (slot order, ids from 1), then
        stuff in channel order with score 1.0.
    """
    b, c = logits.shape[:2]
    s = stuff_classes.numel()
    dev = logits.device
    if band_budget is None:
        band_budget = band_budget_for(dev, 1 << 20)
    maps, rows = [], []
    for i in range(b):
        n = int(counts[i])
        channel = resized_argmax(logits[i], padded_size, image_sizes[i], out_sizes[i], band_budget)
        area = torch.bincount(channel.flatten(), minlength=c)
        keep = torch.zeros(c, dtype=torch.bool, device=dev)
        keep[:s] = area[:s] >= max(stuff_area_threshold, 1)
        keep[s: s + n] = area[s: s + n] > 0
        # instances first, then stuff: ids in that order
        order = torch.cat([torch.arange(s, s + n, device=dev), torch.arange(s, device=dev)])
        ids = torch.zeros(c, dtype=torch.int32, device=dev)
        ids[order] = (torch.cumsum(keep[order].int(), 0) * keep[order].int()).int()
        maps.append(ids[channel])
        cat = torch.cat([labels[i].to(dev).long(), stuff_classes.long()])
        sc = torch.cat([scores[i].to(dev).double(), torch.ones(s, dtype=torch.float64, device=dev)])
        thing = torch.cat([torch.ones(n, device=dev), torch.zeros(s, device=dev)]).double()
        rows.append(torch.stack([torch.full((n + s,), float(i), dtype=torch.float64, device=dev),
                                 ids[order].double(), cat.double(), thing, sc, keep[order].double()], 1))
    return panoptic_predictions(maps, rows)
