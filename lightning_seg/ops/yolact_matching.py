"""YOLACT's prior (anchor) matching and hard negative mining, batched over images.

The rules of YOLACT's ``match`` (``layers/box_utils.py``): every prior takes the ground truth it
overlaps most; then, so that no ground truth goes unused, the (ground truth, prior) pair of
highest IoU is fixed, its row and column removed, and so on once per ground truth (each forced
prior counts as an IoU of 2); priors below ``neg_threshold`` are background, those between the
thresholds neutral; a non-positive prior lying more than ``crowd_threshold`` inside a crowd box
(intersection over the prior's area) becomes neutral.

The forced pairs are greedy by construction, one per ground truth in decreasing IoU order; the
loop runs over the largest number of ground truths of an image, with every image of the batch
in each step (no loop over images or priors).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .box_matching import batched_box_ioa, batched_box_iou

__all__ = ["PriorMatch", "ohem_negatives", "yolact_match"]


class PriorMatch(NamedTuple):
    """Matching of every prior of every image.

    Attributes:
        gt_index: int64 ``[B, A]`` ground-truth column each prior is matched to (also for
            background and neutral priors, as in the reference; 0 without ground truth).
        state: int64 ``[B, A]``: 1 positive, 0 background, -1 neutral (ignored).
    """

    gt_index: torch.Tensor
    state: torch.Tensor


@torch.no_grad()
def yolact_match(
    gt_boxes: torch.Tensor,
    gt_valid: torch.Tensor,
    priors: torch.Tensor,
    crowd_boxes: torch.Tensor | None = None,
    crowd_valid: torch.Tensor | None = None,
    pos_threshold: float = 0.5,
    neg_threshold: float = 0.4,
    crowd_threshold: float = 0.7,
) -> PriorMatch:
    """Match the priors of a batch to its ground truth as YOLACT does.

    Args:
        gt_boxes: float ``[B, G, 4]`` xyxy; gt_valid: bool ``[B, G]``.
        priors: float ``[A, 4]`` xyxy (shared) or ``[B, A, 4]``.
        crowd_boxes: float ``[B, C, 4]`` crowd regions; crowd_valid: bool ``[B, C]``.
        pos_threshold: IoU from which a prior is positive.
        neg_threshold: IoU below which a prior is background.
        crowd_threshold: a non-positive prior more inside a crowd box than this is neutral.

    Returns:
        :class:`PriorMatch`.
    """
    b, g = gt_valid.shape
    if crowd_boxes is not None and crowd_valid is None:
        crowd_valid = torch.ones(crowd_boxes.shape[:2], dtype=torch.bool, device=crowd_boxes.device)
    pri = priors.expand(b, -1, -1) if priors.ndim == 2 else priors
    a = pri.shape[1]
    dev = pri.device
    overlaps = batched_box_iou(gt_boxes.float(), pri.float())  # [B, G, A]
    # padding rows below every real IoU (>= 0) and below the -1 of removed entries
    overlaps = overlaps.masked_fill(~gt_valid[..., None], -2.0)
    if g:
        best_truth_overlap, best_truth_idx = overlaps.max(1)  # [B, A]
    else:
        best_truth_overlap = torch.full((b, a), -2.0, device=dev)
        best_truth_idx = torch.zeros(b, a, dtype=torch.int64, device=dev)
    counts = gt_valid.sum(1)
    rows = torch.arange(b, device=dev)
    for step in range(int(counts.max()) if g and b else 0):
        active = step < counts  # images that still have a ground truth to force
        best_prior_overlap, best_prior_idx = overlaps.max(2)  # [B, G]
        # padding columns never win, even once every real entry has been removed (-1)
        j = best_prior_overlap.masked_fill(~gt_valid, float("-inf")).max(1).indices  # [B]
        i = best_prior_idx[rows, j]
        ra, ja, ia = rows[active], j[active], i[active]
        overlaps[ra, :, ia] = -1
        overlaps[ra, ja, :] = -1
        best_truth_overlap[ra, ia] = 2
        best_truth_idx[ra, ia] = ja
    best_truth_idx = best_truth_idx.masked_fill((counts == 0)[:, None], 0)
    state = torch.ones(b, a, dtype=torch.int64, device=dev)
    state[best_truth_overlap < pos_threshold] = -1
    state[best_truth_overlap < neg_threshold] = 0
    if crowd_boxes is not None and crowd_boxes.shape[1] and crowd_threshold < 1:
        ioa = batched_box_ioa(pri.float(), crowd_boxes.float())  # [B, A, C]: prior area inside each crowd box
        ioa = ioa.masked_fill(~crowd_valid[:, None, :], 0.0)
        state[(state <= 0) & (ioa.amax(2) > crowd_threshold)] = -1
    return PriorMatch(best_truth_idx, state)


@torch.no_grad()
def ohem_negatives(class_logits: torch.Tensor, state: torch.Tensor, negpos_ratio: int = 3,
                   background: int = 0, min_negatives: int = 0) -> torch.Tensor:
    """YOLACT's online hard negative mining: per image the ``negpos_ratio`` x (positives)
    background priors of highest background loss.

    The background loss of a prior is ``logsumexp(logits) - logits[background]``; positive and
    neutral priors are never chosen, and the count is capped at ``A - 1`` per image, as in
    YOLACT's ``ohem_conf_loss``. The log-sum-exp is taken per prior (YOLACT subtracts one maximum
    over the whole batch, which underflows to ``-inf`` for priors ~100 below it and never mines
    them); the rankings agree otherwise.

    Args:
        class_logits: float ``[B, A, K + 1]`` class logits of every prior (background included).
        state: int64 ``[B, A]`` from :func:`yolact_match` (1 positive, 0 background, -1 neutral).
        negpos_ratio: negatives per positive.
        background: index of the background column.
        min_negatives: at least this many per image (YOLACT: 0, so an image without positives
            gives no classification loss; YOLACT drops such images from training instead).

    Returns:
        bool ``[B, A]`` the chosen negatives.
    """
    logits = class_logits.float()
    loss = torch.logsumexp(logits, -1) - logits[..., background]
    pos, neutral = state == 1, state < 0
    loss = loss.masked_fill(pos | neutral, 0.0)
    order = torch.sort(loss, dim=1, descending=True, stable=True)[1]
    rank = order.argsort(dim=1)
    num_neg = (negpos_ratio * pos.sum(1, keepdim=True)).clamp(min=min_negatives).clamp(max=state.shape[1] - 1)
    return (rank < num_neg) & ~pos & ~neutral
