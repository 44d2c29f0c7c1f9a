"""Mask-classification inference: semantic, instance and panoptic results at original size.

Inputs are a model's ``pred_logits [B, Q, K+1]`` (last = no-object) and ``pred_masks
[B, Q, h, w]`` (logits covering the padded input ``[Hp, Wp]``), plus per image the valid
region of the padded input (``image_size``) and the size to report at (``orig_size``).
Masks go to the original size as detectron2 / Mask2Former do (bilinear to the padded size,
crop, bilinear to the original size) but band by band (:mod:`.mask_resize`), after choosing
the queries that matter, so ``[Q, H, W]`` at original size never exists for all queries.

Decisions are made with tensor operations over all queries; host copies happen once per
batch (how many queries each image keeps) and once at the end (``segments_info``). The loops
over the images of a batch remain because each image has its own valid region and original
size, so its outputs have their own shape; no loop runs over queries, segments or pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..structures import InstancePrediction, PanopticPrediction, SegmentInfo
from .mask_resize import (
    ResizeTaps,
    resize_height,
    resize_height_channels_last,
    resize_taps,
    resize_width,
    row_bands,
)

__all__ = [
    "semantic_inference",
    "instance_inference",
    "panoptic_inference",
    "thing_mask",
    "band_budget_for",
    "resized_argmax",
    "panoptic_predictions",
    "segment_rows",
    "stuff_merged_segments",
    "binary_masks_at_size",
]

Size = tuple[int, int]


def _image_sizes(
    pred_masks: torch.Tensor,
    padded_size: Size | None,
    image_sizes: Sequence[Size] | None,
    orig_sizes: Sequence[Size] | None,
) -> tuple[Size, list[Size], list[Size]]:
    b = pred_masks.shape[0]
    padded = tuple(padded_size) if padded_size is not None else tuple(pred_masks.shape[-2:])
    images = [tuple(s) for s in image_sizes] if image_sizes is not None else [padded] * b
    origs = [tuple(s) for s in orig_sizes] if orig_sizes is not None else list(images)
    if len(images) != b or len(origs) != b:
        raise ValueError(
            f"{b} images in pred_masks but {len(images)} image_sizes and {len(origs)} orig_sizes"
        )
    for i, (h, w) in enumerate(images):
        if not (0 < h <= padded[0] and 0 < w <= padded[1]):
            raise ValueError(
                f"image {i}: image_size {(h, w)} is not inside the padded size {padded}"
            )
    return padded, images, origs  # type: ignore[return-value]


def _taps(
    pred_masks: torch.Tensor, padded: Size, image: Size, orig: Size
) -> tuple[ResizeTaps, ResizeTaps]:
    h, w = pred_masks.shape[-2:]
    dev = pred_masks.device
    return (
        resize_taps(h, orig[0], padded[0], image[0], device=dev),
        resize_taps(w, orig[1], padded[1], image[1], device=dev),
    )


def band_budget_for(device: torch.device | str, cpu_budget: int) -> int:
    """Default elements per band of output rows on ``device``.

    On CPU a band whose working set stays in cache (a few MiB) is fastest: measured with
    ``scripts/benchmarks/ops.py --only inference --bands`` at 640x640, 2**19 elements made
    instance inference 2.2x and panoptic 1.3x faster than 2**24, and 2**20 semantic 1.24x
    (``docs/benchmarks.md``). On an accelerator every
    band costs kernel launches, so bands there are large (2**24 elements).
    """
    return cpu_budget if torch.device(device).type == "cpu" else 1 << 24


def thing_mask(
    thing_classes: torch.Tensor | Sequence[int] | Sequence[bool], num_classes: int, device
) -> torch.Tensor:
    """Bool ``[K]`` is-thing vector from a bool ``[K]`` vector or a list of contiguous thing ids."""
    t = torch.as_tensor(thing_classes, device=device)
    if t.dtype == torch.bool:
        if t.shape != (num_classes,):
            raise ValueError(
                f"is_thing vector has shape {tuple(t.shape)}, expected ({num_classes},)"
            )
        return t
    out = torch.zeros(num_classes, dtype=torch.bool, device=device)
    if t.numel():
        if int(t.min()) < 0 or int(t.max()) >= num_classes:
            raise ValueError(f"thing class ids {t.tolist()} outside [0, {num_classes})")
        out[t.long()] = True
    return out


@torch.no_grad()
def binary_masks_at_size(
    probs: torch.Tensor,
    padded_size: Size,
    image_size: Size,
    out_size: Size,
    threshold: float = 0.5,
    band_budget: int | None = None,
) -> torch.Tensor:
    """Binary masks of one image at ``out_size`` from mask probabilities over the padded input.

    The probabilities are resized as SOLO and YOLACT do (bilinear to the padded input, crop
    the image, bilinear to the output size) and thresholded, band by band of output rows, so
    no float ``[M, H, W]`` exists at the output size.

    Args:
        probs: float ``[M, h, w]`` probabilities covering the padded input.
        padded_size: ``(Hp, Wp)`` of the padded input.
        image_size: ``(H, W)`` of the image inside it.
        out_size: ``(H0, W0)`` of the output.
        threshold: a pixel is on where the resized probability exceeds it.
        band_budget: elements per band (default :func:`band_budget_for`, ``2**19`` on CPU).

    Returns:
        bool ``[M, H0, W0]``.
    """
    if band_budget is None:
        band_budget = band_budget_for(probs.device, 1 << 19)
    h0, w0 = out_size
    out = torch.empty(probs.shape[0], h0, w0, dtype=torch.bool, device=probs.device)
    if probs.shape[0] == 0:
        return out
    ty, tx = _taps(probs, tuple(padded_size), tuple(image_size), (h0, w0))
    wide = resize_width(probs, tx)
    for rows in row_bands(h0, probs.shape[0] * w0, band_budget):
        out[:, rows] = resize_height(wide, ty, rows) > threshold
    return out


@torch.no_grad()
def resized_argmax(
    logits: torch.Tensor,
    padded_size: Size,
    image_size: Size,
    out_size: Size,
    band_budget: int | None = None,
) -> torch.Tensor:
    """Argmax over channels of logits brought to an image's output size, band by band.

    The logits cover the padded input; as detectron2's ``sem_seg_postprocess`` they are
    resized to the padded size, cropped to the image, resized to ``out_size`` (bilinear, in one
    separable step, :mod:`.mask_resize`), without ``[C, H0, W0]`` existing at once.

    Args:
        logits: float ``[C, h, w]``.
        padded_size: ``(Hp, Wp)`` of the padded input.
        image_size: ``(H, W)`` valid region of the padded input.
        out_size: ``(H0, W0)``.
        band_budget: elements per band of output rows; ``None`` uses :func:`band_budget_for`.

    Returns:
        int64 ``[H0, W0]`` (the first maximal channel on ties).
    """
    if band_budget is None:
        band_budget = band_budget_for(logits.device, 1 << 20)
    c = logits.shape[0]
    ty, tx = _taps(logits, tuple(padded_size), tuple(image_size), tuple(out_size))
    h0, w0 = out_size
    out = torch.empty(h0, w0, dtype=torch.long, device=logits.device)
    wide = resize_width(logits.float(), tx)
    for rows in row_bands(h0, c * w0, band_budget):
        out[rows] = resize_height(wide, ty, rows).max(0).indices
    return out


@torch.no_grad()
def semantic_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    padded_size: Size | None = None,
    image_sizes: Sequence[Size] | None = None,
    orig_sizes: Sequence[Size] | None = None,
    band_budget: int | None = None,
) -> list[torch.Tensor]:
    """Per-pixel class map: argmax over classes of ``sum_q softmax(cls)_q,k * sigmoid(mask)_q``.

    Args:
        pred_logits: float ``[B, Q, K+1]``.
        pred_masks: float ``[B, Q, h, w]`` logits over the padded input.
        padded_size: ``(Hp, Wp)`` of the padded input (default: the mask size).
        image_sizes: per image ``(H, W)`` valid region of the padded input (default: all).
        orig_sizes: per image ``(H0, W0)`` output size (default: ``image_sizes``).
        band_budget: elements per band of output rows (bounds memory); ``None`` uses
            :func:`band_budget_for` (``2**20`` on CPU).

    Returns:
        ``B`` int64 ``[H0, W0]`` class maps.
    """
    padded, images, origs = _image_sizes(pred_masks, padded_size, image_sizes, orig_sizes)
    if band_budget is None:
        band_budget = band_budget_for(pred_masks.device, 1 << 20)
    cls = pred_logits.float().softmax(-1)[..., :-1]  # [B, Q, K]
    q, k = cls.shape[1:]
    out = []
    for i in range(pred_masks.shape[0]):
        ty, tx = _taps(pred_masks, padded, images[i], origs[i])
        h0, w0 = origs[i]
        sem = torch.empty(h0, w0, dtype=torch.long, device=pred_masks.device)
        wide = resize_width(pred_masks[i], tx)
        cls_t = cls[i].T.contiguous()  # [K, Q]
        for rows in row_bands(h0, (q + k) * w0, band_budget):
            probs = resize_height(wide, ty, rows).sigmoid_()  # [Q, r, W0]
            # Class-major scores: both the product and the max over classes (a reduction
            # across rows, vectorised along pixels) run faster in this layout than
            # pixel-major; max returns the first maximal index, as argmax does.
            scores = cls_t @ probs.flatten(1)  # [K, r*W0]
            sem[rows] = scores.max(0).indices.view(-1, w0)
        out.append(sem)
    return out


@torch.no_grad()
def instance_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    padded_size: Size | None = None,
    image_sizes: Sequence[Size] | None = None,
    orig_sizes: Sequence[Size] | None = None,
    topk: int = 100,
    thing_classes: torch.Tensor | Sequence[int] | Sequence[bool] | None = None,
    score_threshold: float | None = None,
    drop_empty: bool = False,
    band_budget: int | None = None,
) -> list[InstancePrediction]:
    """Mask2Former instance inference: top-k over (query, class) pairs.

    The score of a pair is ``softmax(cls)[k] * mean(sigmoid(mask) over the binary mask)``
    with the binary mask ``mask_logit > 0`` at original size. With ``thing_classes`` (panoptic
    mode) pairs of stuff classes are dropped after the top-k, as Mask2Former does.

    Args:
        pred_logits: float ``[B, Q, K+1]``.
        pred_masks: float ``[B, Q, h, w]``.
        padded_size, image_sizes, orig_sizes: as in :func:`semantic_inference`.
        topk: pairs kept per image before filtering.
        thing_classes: contiguous thing ids or a bool ``[K]`` vector; ``None`` keeps all.
        score_threshold: drop pairs scoring below it (``None`` keeps all).
        drop_empty: drop pairs whose binary mask is empty.
        band_budget: elements per band of output rows; ``None`` uses
            :func:`band_budget_for` (``2**19`` on CPU).

    Returns:
        ``B`` :class:`InstancePrediction` (``masks`` bool ``[M, H0, W0]``, ``labels`` int64
        ``[M]``, ``scores`` float32 ``[M]``), sorted by class score of the pair.
    """
    padded, images, origs = _image_sizes(pred_masks, padded_size, image_sizes, orig_sizes)
    if band_budget is None:
        band_budget = band_budget_for(pred_masks.device, 1 << 19)
    b, q = pred_logits.shape[:2]
    k = pred_logits.shape[-1] - 1
    cls = pred_logits.float().softmax(-1)[..., :-1].flatten(1)  # [B, Q*K]
    cls_scores, flat_idx = cls.topk(min(topk, q * k), dim=1)
    labels = flat_idx % k
    queries = torch.div(flat_idx, k, rounding_mode="floor")
    if thing_classes is not None:
        keep = thing_mask(thing_classes, k, pred_logits.device)[labels]
    else:
        keep = torch.ones_like(labels, dtype=torch.bool)
    if score_threshold is not None:
        # The mask score is at most 1, so a pair whose class score is already below the
        # threshold can be dropped before its mask is upsampled.
        keep &= cls_scores >= score_threshold
    results: list[InstancePrediction] = []
    for i in range(b):
        sel = keep[i]
        qi, li, si = queries[i][sel], labels[i][sel], cls_scores[i][sel]
        ty, tx = _taps(pred_masks, padded, images[i], origs[i])
        h0, w0 = origs[i]
        chosen = pred_masks[i].index_select(0, qi)
        masks = torch.empty(qi.shape[0], h0, w0, dtype=torch.bool, device=pred_masks.device)
        prob_sum = torch.zeros(qi.shape[0], device=pred_masks.device)
        area = torch.zeros(qi.shape[0], device=pred_masks.device)
        wide = resize_width(chosen, tx)
        for rows in row_bands(h0, max(qi.shape[0], 1) * w0, band_budget):
            logit = resize_height(wide, ty, rows)
            binary = logit > 0
            masks[:, rows] = binary
            # sigmoid(x) > 0.5 exactly where x > 0, so the masked sum is relu(s - 0.5) + 0.5 * area.
            n_on = binary.flatten(1).view(torch.uint8).sum(1, dtype=torch.int32).float()
            prob_sum += logit.sigmoid_().sub_(0.5).clamp_(min=0).flatten(1).sum(1) + 0.5 * n_on
            area += n_on
        scores = si * (prob_sum / (area + 1e-6))
        ok = torch.ones_like(scores, dtype=torch.bool)
        if score_threshold is not None:
            ok &= scores >= score_threshold
        if drop_empty:
            ok &= area > 0
        results.append(InstancePrediction(masks=masks[ok], labels=li[ok], scores=scores[ok]))
    return results


@torch.no_grad()
def panoptic_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    thing_classes: torch.Tensor | Sequence[int] | Sequence[bool],
    padded_size: Size | None = None,
    image_sizes: Sequence[Size] | None = None,
    orig_sizes: Sequence[Size] | None = None,
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    band_budget: int | None = None,
) -> list[PanopticPrediction]:
    """Mask2Former panoptic inference.

    Queries predicting no-object or with class score ``<= object_mask_threshold`` are
    dropped. Each pixel goes to the kept query with the largest ``score * sigmoid(mask)``
    (first query on ties) if that query's mask probability there is ``>= 0.5``, else to void.
    A query becomes a segment when it wins some pixel, has pixels with probability ``>= 0.5``,
    and its won area is at least ``overlap_threshold`` of the latter; stuff segments of the
    same class merge into the first one. Segment ids count from 1 in query order.

    Args:
        pred_logits: float ``[B, Q, K+1]``.
        pred_masks: float ``[B, Q, h, w]``.
        thing_classes: contiguous thing ids or a bool ``[K]`` vector.
        padded_size, image_sizes, orig_sizes: as in :func:`semantic_inference`.
        object_mask_threshold: class-score threshold for keeping a query.
        overlap_threshold: minimum won-area / mask-area ratio of a segment.
        band_budget: elements per band of output rows; ``None`` uses
            :func:`band_budget_for` (``2**19`` on CPU).

    Returns:
        ``B`` :class:`PanopticPrediction`: ``panoptic_seg`` int32 ``[H0, W0]`` (0 = void) and
        ``segments_info`` (id, contiguous category_id, isthing, score = class score of the
        best query in the segment).
    """
    padded, images, origs = _image_sizes(pred_masks, padded_size, image_sizes, orig_sizes)
    if band_budget is None:
        band_budget = band_budget_for(pred_masks.device, 1 << 19)
    b, q = pred_logits.shape[:2]
    k = pred_logits.shape[-1] - 1
    dev = pred_masks.device
    is_thing = thing_mask(thing_classes, k, dev)
    scores, labels = pred_logits.float().softmax(-1).max(-1)  # [B, Q]
    keep = (labels != k) & (scores > object_mask_threshold)
    # Kept queries first, in query order, so each image can take a prefix.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True)[1]
    counts = keep.sum(1).tolist()  # the one mid-batch host copy
    seg_rows = []
    maps = []
    for i in range(b):
        n = counts[i]
        h0, w0 = origs[i]
        if n == 0:
            maps.append(torch.zeros(h0, w0, dtype=torch.int32, device=dev))
            continue
        idx = order[i, :n]
        sc, lab = scores[i, idx], labels[i, idx]
        ty, tx = _taps(pred_masks, padded, images[i], origs[i])
        chosen = pred_masks[i].index_select(0, idx)
        winner = torch.empty(h0, w0, dtype=torch.long, device=dev)
        confident = torch.empty(h0, w0, dtype=torch.bool, device=dev)
        mask_area = torch.zeros(n, dtype=torch.long, device=dev)
        orig_area = torch.zeros(n, dtype=torch.long, device=dev)
        final_area = torch.zeros(n, dtype=torch.long, device=dev)
        # Queries innermost, so the per-pixel argmax over queries reads contiguous memory.
        wide = resize_width(chosen, tx).permute(1, 2, 0).contiguous()  # [h, W0, n]
        for rows in row_bands(h0, 2 * n * w0, band_budget):
            prob = resize_height_channels_last(wide, ty, rows).sigmoid_()  # [r, W0, n]
            win = (prob * sc).argmax(-1)
            conf = torch.gather(prob, -1, win[..., None])[..., 0] >= 0.5
            winner[rows], confident[rows] = win, conf
            orig_area += (prob >= 0.5).view(-1, n).sum(0)
            mask_area += torch.bincount(win.flatten(), minlength=n)
            final_area += torch.bincount(win[conf], minlength=n)
        accepted = (mask_area > 0) & (orig_area > 0) & (final_area > 0)
        accepted &= mask_area.double() >= overlap_threshold * orig_area.double()
        thing = is_thing[lab]
        # Stuff merges into the first accepted query of its class.
        same = (lab[:, None] == lab[None, :]) & accepted[None, :] & ~thing[None, :]
        same &= torch.ones(n, n, dtype=torch.bool, device=dev).tril()
        first = torch.where(thing | ~same.any(1), torch.arange(n, device=dev), same.int().argmax(1))
        opens = accepted & (first == torch.arange(n, device=dev))
        seg_of_opener = torch.cumsum(opens.long(), 0)
        seg_id = torch.where(accepted, seg_of_opener[first], torch.zeros_like(first))
        pan = torch.where(confident, seg_id[winner], torch.zeros_like(winner)).to(torch.int32)
        maps.append(pan)
        seg_score = torch.zeros(n, device=dev).scatter_reduce(
            0, first, torch.where(accepted, sc, torch.zeros_like(sc)), reduce="amax"
        )
        rows_i = torch.stack(
            [
                torch.full_like(seg_id, i).double(),
                seg_id.double(),
                lab.double(),
                thing.double(),
                seg_score.double(),
                opens.double(),
            ],
            dim=1,
        )
        seg_rows.append(rows_i)
    return panoptic_predictions(maps, seg_rows)


def stuff_merged_segments(labels: torch.Tensor, is_thing: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The segment of each kept query: itself for a thing, the first kept query of its class for stuff.

    Args:
        labels: int64 ``[M]`` classes of the kept queries; is_thing: bool ``[K]``; num_classes: ``K``.

    Returns:
        int64 ``[M]`` index (into the kept queries) of each query's segment representative.
    """
    m = labels.numel()
    order = torch.arange(m, device=labels.device)
    first = torch.full((num_classes,), m, dtype=torch.long, device=labels.device)
    first.scatter_reduce_(0, labels, order, reduce="amin")
    return torch.where(is_thing[labels], order, first[labels])


def segment_rows(image: int, seg: torch.Tensor, new_id: torch.Tensor, labels: torch.Tensor, is_thing: torch.Tensor,
                 scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """:func:`panoptic_predictions` rows of one image's segments.

    Args:
        image: the image's index in the batch.
        seg: int64 ``[M]`` representative of each kept query (:func:`stuff_merged_segments`).
        new_id: int64 ``[M]`` segment id of each representative (others unused).
        labels: int64 ``[M]``; is_thing: bool ``[K]``; scores: float ``[M]`` class scores.
        keep: bool ``[M]`` the representatives whose segments are reported.

    Returns:
        float64 ``[R, 6]``: one row per kept representative, its segment's score the best of its queries'.
    """
    best = torch.zeros(seg.numel(), device=seg.device).scatter_reduce_(0, seg, scores.float(), "amax")
    reps = torch.nonzero(keep).squeeze(1)
    lab = labels[reps]
    return torch.stack([torch.full_like(best[reps], image), new_id[reps].float(), lab.float(), is_thing[lab].float(),
                        best[reps], torch.ones_like(best[reps])], 1).double()


def panoptic_predictions(
    maps: Sequence[torch.Tensor], rows: Sequence[torch.Tensor]
) -> list[PanopticPrediction]:
    """Panoptic predictions from id maps and segment rows, with one copy to the host.

    Args:
        maps: per image int32 ``[H, W]`` segment-id maps.
        rows: float64 ``[R_i, 6]`` tensors of ``(image, id, category_id, isthing, score, keep)``;
            the kept rows become each image's ``segments_info``, in row order.

    Returns:
        ``len(maps)`` :class:`PanopticPrediction`.
    """
    infos: list[list[SegmentInfo]] = [[] for _ in maps]
    if len(rows):
        table = torch.cat(list(rows))
        # filtering on the device, so that only kept rows are copied
        for img, sid, cat, th, s, _ in table[table[:, 5] > 0].cpu().tolist():
            infos[int(img)].append(
                SegmentInfo(id=int(sid), category_id=int(cat), isthing=bool(th), score=float(s))
            )
    return [PanopticPrediction(panoptic_seg=m, segments_info=inf) for m, inf in zip(maps, infos)]
