"""Batch targets -> the padded ground truth the R-CNN heads train on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_seg.models.rcnn.rpn import BoxTargets


def instance_columns(target: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Segments of one target that are ground-truth instances and crowd thing regions.

    Args:
        target: one image's target (``boxes`` float ``[N, 4]``, ``is_thing``, ``iscrowd`` bool ``[N]``).

    Returns:
        ``(instances, crowd)``: int64 ``[G]`` segments that are things, not crowd, with a
        non-empty box, and int64 ``[C]`` crowd thing segments with a non-empty box.
    """
    boxes = target["boxes"]
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    thing = target["is_thing"]
    return (torch.nonzero(thing & ~target["iscrowd"] & nonempty).squeeze(1),
            torch.nonzero(target["iscrowd"] & thing & nonempty).squeeze(1))


def box_targets_from_batch(targets: Sequence[dict[str, Any]], with_masks: bool = True) -> BoxTargets:
    """Things without crowd (and with a non-empty mask) as ground truth; crowd thing regions apart.

    Args:
        targets: the batch's per-image targets (``boxes`` float ``[N, 4]``, ``labels``,
            ``iscrowd``, ``is_thing``, ``masks`` bool ``[N, Hp, Wp]``).
        with_masks: gather the ground-truth masks (mask head).

    Returns:
        :class:`~lightning_seg.models.rcnn.rpn.BoxTargets` with at least one (padded, empty-box)
        ground-truth column, so every image has the same shape even without annotations; no
        crowd columns when the batch has no crowd region.
    """
    keeps, crowds = [], []
    for t in targets:
        keep, crowd = instance_columns(t)
        keeps.append(keep)
        crowds.append(crowd)
    b = len(targets)
    g = max(1, max(len(k) for k in keeps))
    c = max(len(k) for k in crowds)
    device = targets[0]["boxes"].device
    boxes = torch.zeros(b, g, 4, device=device)
    labels = torch.zeros(b, g, dtype=torch.int64, device=device)
    valid = torch.zeros(b, g, dtype=torch.bool, device=device)
    mask_index = torch.full((b, g), -1, dtype=torch.int64, device=device)
    crowd_boxes = torch.zeros(b, c, 4, device=device)
    crowd_valid = torch.zeros(b, c, dtype=torch.bool, device=device)
    masks = []
    offset = 0
    for i, (t, keep, crowd) in enumerate(zip(targets, keeps, crowds)):
        n = len(keep)
        boxes[i, :n] = t["boxes"][keep].float()
        labels[i, :n] = t["labels"][keep]
        valid[i, :n] = True
        mask_index[i, :n] = torch.arange(offset, offset + n, device=device)
        offset += n
        crowd_boxes[i, : len(crowd)] = t["boxes"][crowd].float()
        crowd_valid[i, : len(crowd)] = True
        if with_masks:
            masks.append(t["masks"][keep])
    gt_masks = torch.cat(masks) if with_masks else None
    return BoxTargets(boxes, labels, valid, mask_index, gt_masks, crowd_boxes, crowd_valid)


def semantic_targets(targets: Sequence[dict[str, Any]], class_map: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """The batch's semantic maps int64 ``[B, Hp, Wp]`` relabelled by ``class_map``.

    Args:
        targets: per-image targets with ``semantic`` int64 ``[Hp, Wp]`` (class ids, void = any
            value outside ``[0, K)``).
        class_map: int64 ``[K]`` new label of every class (``ignore_index`` to ignore it).
        ignore_index: label of void pixels.
    """
    sem = torch.stack([t["semantic"] for t in targets])
    k = class_map.numel()
    valid = (sem >= 0) & (sem < k)
    return torch.where(valid, class_map[sem.clamp(0, k - 1)], torch.full_like(sem, ignore_index))


def segment_maps(targets: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which segment covers each pixel, and the ground-truth instance column of each segment.

    Args:
        targets: per-image targets (``masks`` bool ``[N, Hp, Wp]``, non-overlapping as in
            panoptic annotations; the instance columns are those of
            :func:`box_targets_from_batch`).

    Returns:
        ``(segment, column)``: int64 ``[B, Hp, Wp]`` index of the segment of every pixel (-1:
        none); int64 ``[B, N_max]`` ground-truth column of every segment (-1: not an instance).
    """
    n_max = max(1, max(int(t["masks"].shape[0]) for t in targets))
    maps, columns = [], []
    for t in targets:
        masks = t["masks"]
        n = masks.shape[0]
        # 1 + index where a mask covers the pixel (the last one if masks overlap), 0 elsewhere
        dtype = torch.int16 if n < (1 << 15) else torch.int32
        ids = torch.arange(1, n + 1, dtype=dtype, device=masks.device)[:, None, None]
        maps.append((masks.to(dtype) * ids).amax(0).long() - 1 if n else
                    torch.full(masks.shape[1:], -1, dtype=torch.int64, device=masks.device))
        keep, _ = instance_columns(t)
        col = torch.full((n_max,), -1, dtype=torch.int64, device=masks.device)
        col[keep] = torch.arange(keep.numel(), device=masks.device)
        columns.append(col)
    return torch.stack(maps), torch.stack(columns)
