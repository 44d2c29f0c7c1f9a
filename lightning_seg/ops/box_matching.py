"""Anchor / proposal matching and balanced sampling for a whole batch at once (R-CNN training).

torchvision and detectron2 match and sample image by image in Python; here every image of the
batch is one row of a padded tensor: ground truth ``[B, G, 4]`` with a validity mask, anchors or
proposals ``[B, A, 4]`` (or ``[A, 4]`` shared by the batch). The rules are detectron2's
``Matcher`` and ``subsample_labels``:

* each box takes the ground truth of highest IoU; IoU ``>= high`` is foreground (label 1),
  ``< low`` background (0), in between ignored (-1);
* ``allow_low_quality``: a box whose IoU with some ground truth equals that ground truth's best
  IoU is foreground too (every ground truth gets at least one box, RPN);
* crowd regions: a box that is not foreground and lies mostly inside a crowd box (intersection
  over the box's own area ``>= crowd_ioa_threshold``) is ignored, neither positive nor negative;
* sampling keeps at most ``num * positive_fraction`` random foreground boxes and fills up to
  ``num`` with random background boxes, per image, from one ``torch.rand`` draw for the batch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_area

__all__ = ["batched_box_ioa", "batched_box_iou", "ignore_crowd_overlaps", "match_boxes", "sample_balanced"]


def _intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of boxes of the same image.

    ``torchvision.ops.box_iou`` for a batch (same arithmetic, broadcast over the leading dim).

    Args:
        boxes1: float ``[B, N, 4]`` xyxy.
        boxes2: float ``[B, M, 4]`` xyxy.

    Returns:
        float ``[B, N, M]``.
    """
    inter = _intersection(boxes1, boxes2)
    union = box_area(boxes1.reshape(-1, 4)).view(boxes1.shape[:-1])[..., :, None] \
        + box_area(boxes2.reshape(-1, 4)).view(boxes2.shape[:-1])[..., None, :] - inter
    return inter / union


def batched_box_ioa(boxes: Tensor, regions: Tensor) -> Tensor:
    """Intersection of each box with each region over the box's own area (0 for empty boxes).

    Args:
        boxes: float ``[B, N, 4]`` or ``[N, 4]`` (shared by the batch) xyxy.
        regions: float ``[B, M, 4]`` xyxy.

    Returns:
        float ``[B, N, M]``.
    """
    if boxes.ndim == 2:
        boxes = boxes.expand(regions.shape[0], -1, -1)
    inter = _intersection(boxes, regions)
    area = box_area(boxes.reshape(-1, 4)).view(boxes.shape[:-1])[..., :, None]
    return torch.where(area > 0, inter / area.clamp(min=1e-12), torch.zeros_like(inter))


def match_boxes(
    iou: Tensor,
    gt_valid: Tensor,
    high: float,
    low: float,
    allow_low_quality: bool = False,
    padding_is_empty: bool = False,
) -> tuple[Tensor, Tensor]:
    """Match every box to its best ground truth and label it foreground / background / ignored.

    Args:
        iou: float ``[B, G, A]`` IoU of ground truth ``g`` with box ``a`` (any value for padded
            ground truth, which never matches).
        gt_valid: bool ``[B, G]``, False for padding.
        high: IoU at or above which a box is foreground.
        low: IoU below which a box is background (``low == high``: nothing is ignored).
        allow_low_quality: also make foreground every box of highest IoU with some ground truth
            (ties included, as detectron2; a ground truth that overlaps nothing adds none).
        padding_is_empty: the padded ground truth already has IoU 0 with every box (an empty
            box), which saves a pass over ``iou``.

    Returns:
        ``(matches, labels)``: int64 ``[B, A]`` index of the best ground truth (0 where there is
        none), int8 ``[B, A]`` 1 foreground, 0 background, -1 ignored.
    """
    b, g, a = iou.shape
    if g == 0:
        return (torch.zeros(b, a, dtype=torch.int64, device=iou.device),
                torch.zeros(b, a, dtype=torch.int8, device=iou.device))
    if not padding_is_empty:
        iou = iou.masked_fill(~gt_valid[:, :, None], -1.0)
    best, matches = iou.max(dim=1)
    labels = torch.full((b, a), -1, dtype=torch.int8, device=iou.device)
    labels[best < low] = 0
    labels[best >= high] = 1
    if allow_low_quality:
        highest = iou.max(dim=2, keepdim=True).values
        is_best = (iou == highest) & gt_valid[:, :, None] & (highest > 0)
        labels[is_best.any(dim=1)] = 1
    return matches.masked_fill(best < 0, 0), labels


def ignore_crowd_overlaps(labels: Tensor, boxes: Tensor, crowd_boxes: Tensor, crowd_valid: Tensor,
                          crowd_ioa_threshold: float) -> Tensor:
    """Labels with the non-foreground boxes that lie inside a crowd region set to ignored (-1).

    Args:
        labels: int8 ``[B, A]`` from :func:`match_boxes`.
        boxes: float ``[B, A, 4]`` or ``[A, 4]`` xyxy.
        crowd_boxes: float ``[B, C, 4]`` xyxy boxes of the crowd regions.
        crowd_valid: bool ``[B, C]``.
        crowd_ioa_threshold: fraction of a box's area inside one crowd box that makes it ignored.

    Returns:
        int8 ``[B, A]``.
    """
    if crowd_boxes.shape[1] == 0:
        return labels
    ioa = batched_box_ioa(boxes, crowd_boxes).masked_fill(~crowd_valid[:, None, :], 0.0)
    inside = ioa.max(dim=2).values >= crowd_ioa_threshold
    return labels.masked_fill(inside & (labels != 1), -1)


def sample_balanced(
    labels: Tensor,
    num_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random foreground / background subsets of every image, detectron2's ``subsample_labels``.

    Per image: the ``min(#fg, int(num_per_image * positive_fraction))`` foreground boxes and the
    ``min(#bg, num_per_image - #fg kept)`` background boxes of largest key in one uniform draw
    ``torch.rand(labels.shape)``, i.e. uniformly random subsets.

    Args:
        labels: int8 ``[B, A]`` (1 foreground, 0 background, -1 ignored).
        num_per_image: boxes kept per image.
        positive_fraction: largest share of foreground among them.
        generator: random generator of the draw (default: the global one).

    Returns:
        ``(positive, negative)``: bool ``[B, A]`` masks of the kept boxes.
    """
    b, a = labels.shape
    keys = torch.rand(b, a, device=labels.device, generator=generator)
    positive = torch.zeros(b, a, dtype=torch.bool, device=labels.device)
    negative = torch.zeros_like(positive)
    num_pos = min(int(num_per_image * positive_fraction), a)
    if num_pos > 0:
        vals, idx = torch.where(labels == 1, keys, -1.0).topk(num_pos, dim=1)
        positive.scatter_(1, idx, vals >= 0)
    kept_pos = positive.sum(dim=1, keepdim=True)
    num_neg = min(num_per_image, a)
    if num_neg > 0:
        vals, idx = torch.where(labels == 0, keys, -1.0).topk(num_neg, dim=1)
        rank = torch.arange(num_neg, device=labels.device)
        negative.scatter_(1, idx, (vals >= 0) & (rank < num_per_image - kept_pos))
    return positive, negative
