"""Pairwise matching costs of set prediction: every prediction against every target of an image.

Written once and used by the matcher (:mod:`lightning_seg.ops.matching`) and by every term of
the set criterion (:mod:`lightning_seg.losses.set_terms`). Mask costs take predictions in the
points-major layout ``[b, P, Q]`` (``P`` points or pixels, ``Q`` predictions) and targets
``[b, T, P]``, so each cost is one batched matrix product per term; they return ``[b, Q, T]``
in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou

__all__ = [
    "box_l1_cost",
    "class_cost",
    "generalized_iou_cost",
    "pairwise_dice",
    "pairwise_sigmoid_bce",
    "pairwise_sigmoid_focal",
]


def class_cost(pred_logits: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """``-softmax(logits)[label]`` of every (prediction, target) pair (DETR, Mask2Former).

    Args:
        pred_logits: float ``[B, Q, K+1]`` class logits (last = no-object).
        target_labels: int64 ``[B, T]`` (any value in ``[0, K]`` for padding).

    Returns:
        float32 ``[B, Q, T]``.
    """
    b, q, _ = pred_logits.shape
    t = target_labels.shape[1]
    prob = pred_logits.float().softmax(-1)
    labels = target_labels.clamp(0, prob.shape[-1] - 1)
    return -torch.gather(prob, 2, labels[:, None, :].expand(b, q, t))


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid binary cross-entropy over points of every (prediction, target) pair.

    ``BCE(x, y) = softplus(-x) y + softplus(x) (1 - y) = softplus(x) - x y``, so the pairwise mean
    is a per-prediction mean minus one batched product.

    Args:
        logits: float ``[b, P, Q]`` mask logits at the points.
        targets: float32 ``[b, T, P]`` in ``[0, 1]``.

    Returns:
        float32 ``[b, Q, T]``.
    """
    num_points = targets.shape[-1]
    xy = torch.bmm(targets, logits)  # [b, T, Q]
    return (F.softplus(logits).mean(1)[:, None, :] - xy / num_points).transpose(1, 2)


def pairwise_dice(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Smoothed dice loss ``1 - (2 s.t + 1) / (sum s + sum t + 1)`` of every pair.

    Args:
        probs: float ``[b, P, Q]`` mask probabilities (``sigmoid`` of the logits).
        targets: float32 ``[b, T, P]`` in ``[0, 1]``.

    Returns:
        float32 ``[b, Q, T]``.
    """
    b, t, num_points = targets.shape
    # A row of ones under the targets makes the product also return the sum of s over points.
    tgt1 = torch.cat([targets, targets.new_ones(b, 1, num_points)], dim=1)  # [b, T+1, P]
    inter = torch.bmm(tgt1, probs)  # [b, T+1, Q]: intersections, then the sum of s
    dice = 1.0 - (2.0 * inter[:, :t] + 1.0) / (inter[:, t:] + targets.sum(-1)[:, :, None] + 1.0)
    return dice.transpose(1, 2)


def pairwise_sigmoid_focal(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean sigmoid focal loss (Lin et al.) over points of every pair, for hard 0/1 targets.

    ``FL = alpha_t (1 - p_t)^gamma BCE``; ``alpha < 0`` disables the class balancing. Soft
    targets are weighted linearly between the positive and the negative terms.

    Args:
        logits: float ``[b, P, Q]``.
        targets: float32 ``[b, T, P]`` in ``{0, 1}``.

    Returns:
        float32 ``[b, Q, T]``.
    """
    x = logits.float()
    p = x.sigmoid()
    pos = (1 - p) ** gamma * F.softplus(-x)
    neg = p**gamma * F.softplus(x)
    if alpha >= 0:
        pos = pos * alpha
        neg = neg * (1 - alpha)
    n = targets.shape[-1]
    return ((torch.bmm(targets, pos) + torch.bmm(1 - targets, neg)) / n).transpose(1, 2)


def box_l1_cost(pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """L1 distance of every (prediction, target) box pair (DETR's ``cost_bbox``).

    Args:
        pred_boxes: float ``[B, Q, 4]`` (any box format; DETR: normalised ``cx, cy, w, h``).
        target_boxes: float ``[B, T, 4]`` in the same format.

    Returns:
        float32 ``[B, Q, T]``.
    """
    return torch.cdist(pred_boxes.float(), target_boxes.float(), p=1)


def generalized_iou_cost(pred_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
    """``-GIoU`` of every pair of ``cx, cy, w, h`` boxes (DETR's ``cost_giou``), batched.

    Args:
        pred_boxes: float ``[B, Q, 4]`` ``cx, cy, w, h``.
        target_boxes: float ``[B, T, 4]`` ``cx, cy, w, h``.

    Returns:
        float32 ``[B, Q, T]``.
    """
    b, q, _ = pred_boxes.shape
    t = target_boxes.shape[1]
    pred = box_convert(pred_boxes.float(), "cxcywh", "xyxy").reshape(b * q, 4)
    tgt = box_convert(target_boxes.float(), "cxcywh", "xyxy").reshape(b * t, 4)
    if b == 1 or q == 0 or t == 0:
        return -generalized_box_iou(pred, tgt).reshape(b, q, t)
    # one [BQ, BT] call and the per-image diagonal blocks: torchvision's op is not batched
    full = generalized_box_iou(pred, tgt).reshape(b, q, b, t)
    idx = torch.arange(b, device=full.device)
    return -full[idx, :, idx, :]
