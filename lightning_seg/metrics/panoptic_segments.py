"""A flat, batch-level representation of panoptic segmentations, and converters into it.

Every panoptic input form (the prediction contract, a batch ``Target``, an id map with COCO
``segments_info``, or a (category map, instance map) pair) becomes one
:class:`PanopticSegments`: the pixels of all images of a batch, flattened and concatenated,
each holding the index of its segment in a batch-wide segment list (or -1 for void).
Two such objects built from the same images in the same order line up pixel for pixel, so
(ground truth segment, predicted segment) pairs are counted with one histogram of pair keys
(or one ``torch.unique`` when the key range is too large for a histogram).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def _count_keys(keys: torch.Tensor, num_bins: int) -> torch.Tensor:
    """int64 ``[num_bins]`` histogram of ``keys`` (all in ``[0, num_bins)``), without a host sync on GPU."""
    if keys.device.type == "cpu":
        return torch.bincount(keys, minlength=num_bins)
    counts = torch.zeros(num_bins, dtype=torch.int64, device=keys.device)
    return counts.index_add_(0, keys, torch.ones_like(keys, dtype=torch.int64))


def unique_keys(
    keys: torch.Tensor, num_bins: int, return_inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``torch.unique(keys, return_counts=True[, return_inverse])`` for keys in ``[0, num_bins)``.

    When the key range is small next to the number of keys (the usual case: segments per
    batch squared is far below the pixel count) a histogram replaces the ``O(P log P)`` sort,
    which is several times faster on CPU and GPU alike.

    Returns:
        sorted distinct keys, their counts, and (when asked) each key's position in them.
    """
    if num_bins <= max(4 * keys.numel(), 1 << 16):
        counts = _count_keys(keys, num_bins)
        present = torch.nonzero(counts).flatten()
        inverse = None
        if return_inverse:
            rank = torch.cumsum(counts > 0, 0) - 1
            inverse = rank[keys]
        return present, counts[present], inverse
    if return_inverse:
        uniq, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
        return uniq, counts, inverse
    uniq, counts = torch.unique(keys, return_counts=True)
    return uniq, counts, None


@dataclass
class PanopticSegments:
    """Segments of a batch of images, flattened.

    Attributes:
        index: int64 ``[P]``, for every pixel of every image (images concatenated in row-major
            order) the index of its segment in ``labels``, or -1 for void.
        labels: int64 ``[S]`` contiguous class id of each segment.
        iscrowd: bool ``[S]`` COCO crowd flag of each segment (all False for predictions).
        image: int64 ``[S]`` index within the batch of the image each segment belongs to.
        image_numel: number of pixels of each of the ``B`` images (``P = sum(image_numel)``).
    """

    index: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor
    image: torch.Tensor
    image_numel: list[int]

    @property
    def num_segments(self) -> int:
        """Number of segments ``S`` of the whole batch."""
        return int(self.labels.numel())


def _concat(parts: list[PanopticSegments], device: torch.device) -> PanopticSegments:
    """Concatenate per-image segments, shifting each image's segment indices past the previous."""
    indices, labels, crowds, images = [], [], [], []
    offset = 0
    for b, part in enumerate(parts):
        indices.append(torch.where(part.index >= 0, part.index + offset, part.index))
        labels.append(part.labels)
        crowds.append(part.iscrowd)
        images.append(torch.full_like(part.labels, b))
        offset += part.num_segments
    return PanopticSegments(
        index=torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64, device=device),
        labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=device),
        iscrowd=torch.cat(crowds) if crowds else torch.zeros(0, dtype=torch.bool, device=device),
        image=torch.cat(images) if images else torch.zeros(0, dtype=torch.int64, device=device),
        image_numel=[n for part in parts for n in part.image_numel],
    )


def segments_from_category_instance(
    category: torch.Tensor, instance: torch.Tensor, is_thing: torch.Tensor
) -> PanopticSegments:
    """Segments from a (category map, instance map) pair, the torchmetrics / DeepLab input form.

    A segment is a distinct (category, instance) pair within an image; for stuff classes the
    instance id is ignored (all pixels of a stuff class form one segment). Pixels whose category
    is outside ``[0, K)`` are void. There is no crowd in this form.

    Args:
        category: integer ``[B, H, W]`` contiguous class ids (anything outside ``[0, K)`` = void).
        instance: integer ``[B, H, W]`` non-negative instance ids.
        is_thing: bool ``[K]`` thing flag per class.

    Returns:
        The batch's :class:`PanopticSegments`.
    """
    if category.shape != instance.shape or category.ndim != 3:
        raise ValueError(
            f"category and instance maps must both be [B,H,W]; got {tuple(category.shape)} "
            f"and {tuple(instance.shape)}"
        )
    num_classes = is_thing.numel()
    b, h, w = category.shape
    device = category.device
    if instance.numel() == 0:
        span = 1
    else:
        low, high = torch.aminmax(instance)
        if int(low) < 0:
            raise ValueError("instance ids must be non-negative")
        span = int(high) + 1
    # Per pixel only one integer key is built: (image, category + 1, instance), with every
    # out-of-range category clamped onto the void slots 0 and K + 1. Stuff instances are merged
    # and void dropped afterwards, on the (few) distinct keys rather than on the pixels.
    k2 = num_classes + 2
    n_keys = b * k2 * span
    offset = (torch.arange(b, device=device) * (k2 * span) + span)[:, None]
    clamped = category.reshape(b, h * w).long().clamp(-1, num_classes)
    key = torch.add(instance.reshape(b, h * w).long(), clamped, alpha=span).add_(offset).reshape(-1)
    if n_keys <= max(4 * key.numel(), 1 << 16):
        # Dense key range: a histogram finds the keys in one pass (no sort).
        present_keys = torch.nonzero(_count_keys(key, n_keys)).flatten()
        inverse = None
    else:
        # Sparse instance ids (e.g. 24-bit COCO-style ids): sort-based unique instead.
        present_keys, inverse = torch.unique(key, return_inverse=True)
    cls = (present_keys // span) % k2 - 1
    real = (cls >= 0) & (cls < num_classes)
    thing = is_thing.to(device)[cls.clamp(0, num_classes - 1)]
    # All keys of one stuff class in one image share the segment of instance 0.
    canon = torch.where(thing, present_keys, present_keys - present_keys % span)
    segment_keys, seg_of_key = torch.unique(canon[real], return_inverse=True)
    key_segment = torch.full_like(present_keys, -1)
    key_segment[real] = seg_of_key
    if inverse is None:
        lut = torch.full((n_keys,), -1, dtype=torch.int64, device=device)
        lut[present_keys] = key_segment
        index = lut[key]
    else:
        index = key_segment[inverse]
    labels = (segment_keys // span) % k2 - 1
    image = segment_keys // (k2 * span)
    return PanopticSegments(
        index=index,
        labels=labels,
        iscrowd=torch.zeros(segment_keys.numel(), dtype=torch.bool, device=device),
        image=image,
        image_numel=[h * w] * b,
    )


def _segments_from_id_map(
    id_map: torch.Tensor,
    segments_info: Sequence[Mapping[str, Any]],
    num_classes: int,
    where: str,
    validate: bool,
) -> PanopticSegments:
    """One image's segments from an id map and its ``segments_info`` (see :func:`segments_from_id_maps`)."""
    device = id_map.device
    flat = id_map.reshape(-1).long()
    ids = [int(s["id"]) for s in segments_info]
    labels = [int(s["category_id"]) for s in segments_info]
    crowds = [bool(s.get("iscrowd", False)) for s in segments_info]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: duplicate segment ids in segments_info: {sorted(ids)}")
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"{where}: category ids {bad} are outside [0, {num_classes})")
    ids_t = torch.tensor(ids, dtype=torch.int64, device=device)
    order = torch.argsort(ids_t)
    sorted_ids = ids_t[order]
    if ids:
        pos = torch.searchsorted(sorted_ids, flat).clamp(max=len(ids) - 1)
        found = sorted_ids[pos] == flat
        index = torch.where(found, order[pos], torch.full_like(flat, -1))
    else:
        found = torch.zeros_like(flat, dtype=torch.bool)
        index = torch.full_like(flat, -1)
    if validate:
        # Id 0 is void unless segments_info lists it (COCO panoptic allows a segment with id 0).
        unknown = ~found & (flat != 0)
        if bool(unknown.any()):
            missing = torch.unique(flat[unknown])[:10].tolist()
            raise ValueError(f"{where}: segment ids {missing} are in the id map but not in segments_info")
    return PanopticSegments(
        index=index,
        labels=torch.tensor(labels, dtype=torch.int64, device=device),
        iscrowd=torch.tensor(crowds, dtype=torch.bool, device=device),
        image=torch.zeros(len(ids), dtype=torch.int64, device=device),
        image_numel=[flat.numel()],
    )


def segments_from_id_maps(
    id_maps: Sequence[torch.Tensor],
    segments_infos: Sequence[Sequence[Mapping[str, Any]]],
    num_classes: int,
    validate: bool = True,
) -> PanopticSegments:
    """Segments from per-image id maps and COCO-style ``segments_info`` lists.

    This is the shape of :class:`~lightning_seg.structures.PanopticPrediction` and of COCO
    panoptic ground truth. A pixel belongs to the segment whose ``id`` it holds; id 0 is void
    unless ``segments_info`` lists a segment with id 0 (as the COCO panoptic format allows).

    Args:
        id_maps: ``B`` integer ``[H_b, W_b]`` segment-id maps (sizes may differ).
        segments_infos: ``B`` lists of dicts with ``id``, ``category_id`` (contiguous, in
            ``[0, num_classes)``) and optionally ``iscrowd``.
        num_classes: number of classes ``K``.
        validate: raise when the map holds a non-zero id that ``segments_info`` does not list
            (costs a device-to-host sync).

    Returns:
        The batch's :class:`PanopticSegments`.
    """
    if len(id_maps) != len(segments_infos):
        raise ValueError(f"{len(id_maps)} id maps but {len(segments_infos)} segments_info lists")
    parts = [
        _segments_from_id_map(m, s, num_classes, f"image {i} of the batch", validate)
        for i, (m, s) in enumerate(zip(id_maps, segments_infos))
    ]
    device = id_maps[0].device if len(id_maps) else torch.device("cpu")
    return _concat(parts, device)


def segments_from_masks(
    masks: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    iscrowd: Sequence[torch.Tensor] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    validate: bool = True,
) -> PanopticSegments:
    """Segments from per-image binary masks, the shape of a batch :class:`~lightning_seg.structures.Target`.

    Args:
        masks: ``B`` bool ``[N_b, H_b, W_b]`` non-overlapping masks; pixels in no mask are void.
        labels: ``B`` int64 ``[N_b]`` contiguous class ids.
        iscrowd: ``B`` bool ``[N_b]`` crowd flags (default: none are crowd).
        sizes: optional ``B`` ``(H, W)`` to crop each image's masks to (drops batch padding).
        validate: raise when masks overlap (costs a device-to-host sync).

    Returns:
        The batch's :class:`PanopticSegments`.
    """
    parts = []
    for i, (m, lab) in enumerate(zip(masks, labels)):
        if sizes is not None:
            m = m[:, : sizes[i][0], : sizes[i][1]]
        if m.ndim != 3 or lab.shape != (m.shape[0],):
            raise ValueError(
                f"image {i} of the batch: masks must be [N,H,W] with N labels; got masks "
                f"{tuple(m.shape)} and labels {tuple(lab.shape)}"
            )
        flat = m.reshape(m.shape[0], -1)
        if m.shape[0] == 0:
            index = torch.full((flat.shape[1],), -1, dtype=torch.int64, device=m.device)
        else:
            if validate and bool((flat.sum(0) > 1).any()):
                raise ValueError(f"image {i} of the batch: ground-truth masks overlap")
            hit, first = flat.to(torch.uint8).max(0)
            index = torch.where(hit.bool(), first, torch.full_like(first, -1))
        crowd = (
            iscrowd[i].bool()
            if iscrowd is not None
            else torch.zeros(m.shape[0], dtype=torch.bool, device=m.device)
        )
        parts.append(
            PanopticSegments(
                index=index,
                labels=lab.long(),
                iscrowd=crowd,
                image=torch.zeros(m.shape[0], dtype=torch.int64, device=m.device),
                image_numel=[flat.shape[1]],
            )
        )
    device = masks[0].device if len(masks) else torch.device("cpu")
    return _concat(parts, device)


def to_panoptic_segments(
    value: Any,
    is_thing: torch.Tensor,
    sizes: Sequence[tuple[int, int]] | None = None,
    validate: bool = True,
) -> PanopticSegments:
    """Dispatch any supported panoptic input form to :class:`PanopticSegments`.

    Accepted forms:
        * :class:`PanopticSegments` (returned as is);
        * integer tensor ``[B, H, W, 2]`` of (category, instance), see
          :func:`segments_from_category_instance`;
        * a sequence of dicts with ``panoptic_seg`` and ``segments_info``
          (:class:`~lightning_seg.structures.PanopticPrediction`, or ground truth whose
          ``segments_info`` entries carry ``iscrowd``), see :func:`segments_from_id_maps`;
        * a sequence of dicts with ``masks``, ``labels`` and optionally ``iscrowd``
          (:class:`~lightning_seg.structures.Target`), see :func:`segments_from_masks`.

    Args:
        value: one of the forms above.
        is_thing: bool ``[K]`` thing flag per class.
        sizes: ``(H, W)`` per image to crop mask inputs to (used for padded targets).
        validate: run the consistency checks (they sync with the device).
    """
    if isinstance(value, PanopticSegments):
        return value
    if isinstance(value, torch.Tensor):
        if value.ndim != 4 or value.shape[-1] != 2:
            raise ValueError(
                f"a panoptic tensor must be [B,H,W,2] (category, instance); got {tuple(value.shape)}"
            )
        return segments_from_category_instance(value[..., 0], value[..., 1], is_thing)
    if isinstance(value, Sequence) and len(value) and isinstance(value[0], Mapping):
        first = value[0]
        if "panoptic_seg" in first:
            return segments_from_id_maps(
                [v["panoptic_seg"] for v in value],
                [v["segments_info"] for v in value],
                is_thing.numel(),
                validate=validate,
            )
        if "masks" in first:
            return segments_from_masks(
                [v["masks"] for v in value],
                [v["labels"] for v in value],
                [v["iscrowd"] for v in value] if "iscrowd" in first else None,
                sizes=sizes,
                validate=validate,
            )
    raise TypeError(
        "unsupported panoptic input: expected PanopticSegments, a [B,H,W,2] tensor, or a list of "
        f"dicts with 'panoptic_seg'+'segments_info' or 'masks'+'labels'; got {type(value).__name__}"
    )


@dataclass
class SegmentPairs:
    """Pixel counts of every (ground-truth segment, predicted segment) pair that overlaps.

    Index 0 stands for void on both sides; segment ``s`` of a :class:`PanopticSegments` is
    index ``s + 1``.

    Attributes:
        gt: int64 ``[Q]`` ground-truth side of each pair (0 = void).
        pred: int64 ``[Q]`` predicted side of each pair (0 = void).
        count: int64 ``[Q]`` number of pixels the pair shares.
        gt_area: int64 ``[S_gt + 1]`` pixels of each ground-truth segment (entry 0: gt void).
        pred_area: int64 ``[S_pred + 1]`` pixels of each predicted segment (entry 0: pred void).
    """

    gt: torch.Tensor
    pred: torch.Tensor
    count: torch.Tensor
    gt_area: torch.Tensor
    pred_area: torch.Tensor


def segment_pairs(gt: PanopticSegments, pred: PanopticSegments) -> SegmentPairs:
    """Intersect two segmentations of the same images by counting (gt, pred) pair keys.

    Args:
        gt: ground-truth segments.
        pred: predicted segments of the same images, in the same order and sizes.

    Returns:
        The overlapping pairs and the segment areas, see :class:`SegmentPairs`.
    """
    if list(gt.image_numel) != list(pred.image_numel):
        raise ValueError(
            f"prediction and ground truth differ in image sizes (pixels per image: "
            f"prediction {list(pred.image_numel)}, ground truth {list(gt.image_numel)})"
        )
    n_pred = pred.num_segments + 1
    key = torch.add(pred.index, gt.index, alpha=n_pred).add_(n_pred + 1)
    keys, counts, _ = unique_keys(key, (gt.num_segments + 1) * n_pred)
    pair_gt = keys // n_pred
    pair_pred = keys % n_pred
    gt_area = torch.zeros(gt.num_segments + 1, dtype=torch.int64, device=key.device)
    pred_area = torch.zeros(n_pred, dtype=torch.int64, device=key.device)
    gt_area.index_add_(0, pair_gt, counts)
    pred_area.index_add_(0, pair_pred, counts)
    return SegmentPairs(pair_gt, pair_pred, counts, gt_area, pred_area)
