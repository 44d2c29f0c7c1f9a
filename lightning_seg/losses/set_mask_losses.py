"""Per-mask losses of the set criterion's matched pairs (their pairwise matching-cost forms
are in :mod:`lightning_seg.ops.matching_costs`).

All take mask logits and soft targets sampled at the same points, ``[M, P]``, and work in
float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "sigmoid_bce_per_mask",
    "dice_per_mask",
    "sigmoid_focal_per_mask",
]


def sigmoid_bce_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid binary cross-entropy of each mask over its points.

    Args:
        logits: float ``[M, P]``.
        targets: float ``[M, P]`` in ``[0, 1]``.

    Returns:
        float32 ``[M]``.
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return bce.mean(1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Smoothed dice loss ``1 - (2 s.t + 1) / (sum s + sum t + 1)`` with ``s = sigmoid(logits)``.

    Args:
        logits: float ``[M, P]``.
        targets: float ``[M, P]`` in ``[0, 1]``.

    Returns:
        float32 ``[M]``.
    """
    s = logits.float().sigmoid()
    t = targets.float()
    return 1.0 - (2.0 * (s * t).sum(1) + 1.0) / (s.sum(1) + t.sum(1) + 1.0)


def sigmoid_focal_per_mask(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Mean sigmoid focal loss (Lin et al.) of each mask over its points.

    ``FL = alpha_t (1 - p_t)^gamma BCE`` with ``alpha_t = alpha t + (1 - alpha)(1 - t)``;
    ``alpha < 0`` disables the class balancing.

    Args:
        logits: float ``[M, P]``.
        targets: float ``[M, P]`` in ``[0, 1]``.

    Returns:
        float32 ``[M]``.
    """
    x = logits.float()
    t = targets.float()
    p = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss.mean(1)
