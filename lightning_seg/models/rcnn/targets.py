"""Batch targets -> the padded ground truth the R-CNN heads train on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_seg.models.rcnn.rpn import BoxTargets


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
        boxes = t["boxes"]
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keeps.append(torch.nonzero(t["is_thing"] & ~t["iscrowd"] & nonempty).squeeze(1))
        crowds.append(torch.nonzero(t["iscrowd"] & t["is_thing"] & nonempty).squeeze(1))
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
