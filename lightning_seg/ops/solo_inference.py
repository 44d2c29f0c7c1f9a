"""SOLO / SOLOv2 inference steps before and after the masks, batched over images.

The rules of the SOLO papers' code (mmdetection's ``SOLOV2Head._predict_by_feat_single``):
category scores (sigmoid) keep only the maxima of their 2x2 neighbourhood (``points_nms``); a
(cell, class) pair scoring above ``score_threshold`` is a candidate, with the stride of its
level; after its mask is predicted, a candidate whose mask (probability > 0.5) has no more
pixels than its stride is dropped, and its score is multiplied by its maskness (the mean
probability inside the binary mask). Matrix NMS (:func:`~lightning_seg.ops.matrix_nms`) follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["SOLOCandidates", "points_nms", "solo_candidates", "maskness"]


class SOLOCandidates(NamedTuple):
    """Candidates of a batch, grouped by image.

    Attributes:
        image_index: int64 ``[D]``.
        cell: int64 ``[D]`` index over the concatenated ``S_l x S_l`` grids of the levels.
        labels: int64 ``[D]``.
        scores: float32 ``[D]``.
        strides: float32 ``[D]`` stride of the candidate's level.
    """

    image_index: torch.Tensor
    cell: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    strides: torch.Tensor


def points_nms(heat: torch.Tensor) -> torch.Tensor:
    """Zero every score that is not the maximum of its 2x2 neighbourhood (itself and the cells
    above and to the left).

    Args:
        heat: float ``[B, K, S, S]`` probabilities.

    Returns:
        float ``[B, K, S, S]``.
    """
    hmax = F.max_pool2d(heat, (2, 2), stride=1, padding=1)
    return heat * (hmax[:, :, :-1, :-1] == heat).to(heat.dtype)


@torch.no_grad()
def solo_candidates(
    category_logits: Sequence[torch.Tensor],
    strides: Sequence[float],
    score_threshold: float = 0.1,
) -> SOLOCandidates:
    """The (cell, class) candidates of every image.

    Args:
        category_logits: per level float ``[B, K, S_l, S_l]``.
        strides: per level, the stride a candidate's mask must exceed in pixels.
        score_threshold: candidates score above it (after ``points_nms``).

    Returns:
        :class:`SOLOCandidates`, cells in level then row-major order, classes innermost.
    """
    if len(category_logits) != len(strides):
        raise ValueError(f"{len(category_logits)} levels of logits but {len(strides)} strides")
    # [B, sum S_l^2, K] as the reference flattens them
    scores = torch.cat([points_nms(x.float().sigmoid()).permute(0, 2, 3, 1).flatten(1, 2) for x in category_logits], 1)
    level_stride = torch.cat([torch.full((x.shape[-2] * x.shape[-1],), float(s), device=scores.device)
                              for x, s in zip(category_logits, strides)])
    bi, cell, label = torch.nonzero(scores > score_threshold, as_tuple=True)
    return SOLOCandidates(bi, cell, label, scores[bi, cell, label], level_stride[cell])


def maskness(mask_probs: torch.Tensor, strides: torch.Tensor, threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Which candidates keep their mask, and the maskness that rescales their score.

    Args:
        mask_probs: float ``[D, h, w]`` mask probabilities.
        strides: float ``[D]`` stride of each candidate's level.
        threshold: probability of a mask pixel.

    Returns:
        ``(keep, maskness)``: bool ``[D]`` (binary mask larger than the stride), float ``[D]``
        mean probability inside the binary mask (0 where it is empty).
    """
    binary = mask_probs > threshold
    area = binary.flatten(1).sum(1).float()
    inside = (mask_probs.float() * binary).flatten(1).sum(1)  # float32: up to h * w terms
    return area > strides, torch.where(area > 0, inside / area.clamp(min=1), torch.zeros_like(inside))
