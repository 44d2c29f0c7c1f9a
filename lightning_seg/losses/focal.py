"""Multi-class focal loss (Lin et al., 2017) over pixels, ignore-aware."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.losses.pixel_inputs import check_pixel_inputs, masked_mean, valid_and_safe_target


class FocalLoss(nn.Module):
    """Softmax focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, averaged over non-ignored pixels.

    ``p_t`` is the softmax probability of the true class. ``gamma = 0`` and no ``alpha`` give
    plain cross-entropy. The mean is over labelled pixels (not weighted by ``alpha``); a batch
    with no labelled pixel gives 0.

    Args:
        gamma: focusing exponent (>= 0).
        alpha: ``None`` (1), one factor for all classes, or one per class ``[K]``.
        ignore_index: target value of void pixels.

    Shapes: logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> float scalar.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"FocalLoss gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.ignore_index = ignore_index
        alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
        self.register_buffer("alpha", alpha_t, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> scalar loss."""
        check_pixel_inputs(logits, target, self.ignore_index, "FocalLoss")
        k = logits.shape[1]
        if self.alpha is not None and self.alpha.numel() not in (1, k):
            raise ValueError(f"FocalLoss: alpha has {self.alpha.numel()} values for {k} classes")
        valid, safe = valid_and_safe_target(target, self.ignore_index)
        log_pt = F.log_softmax(logits.float(), dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        pt = log_pt.exp()
        loss = -((1.0 - pt).clamp_min(0.0) ** self.gamma) * log_pt
        if self.alpha is not None:
            loss = loss * (self.alpha if self.alpha.numel() == 1 else self.alpha[safe])
        valid_f = valid.to(loss.dtype)
        return masked_mean(loss * valid_f, valid_f)
