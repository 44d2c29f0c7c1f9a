"""Multi-class soft Dice loss over softmax probabilities, ignore-aware."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.losses.pixel_inputs import check_pixel_inputs, valid_and_safe_target


class DiceLoss(nn.Module):
    """``1 - mean_c (2 sum p_c t_c + s) / (sum p_c^e + sum t_c^e + s)`` over labelled pixels.

    ``p`` is the softmax over classes, ``t`` the one-hot target, sums run over the labelled
    pixels of the whole batch (or of each image with ``per_image=True``, then averaged over
    images that have labelled pixels), and the mean runs over all ``K`` classes. Ignored pixels
    are removed from both sums. A batch with no labelled pixel gives 0.

    Args:
        smooth: ``s``, keeps classes absent from target and prediction at dice 1.
        exponent: ``e`` in the denominator (1 = Sorensen, 2 = V-Net).
        per_image: per-image Dice averaged over images instead of one batch-wide Dice.
        ignore_index: target value of void pixels.

    Shapes: logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> float scalar.
    """

    def __init__(self, smooth: float = 1.0, exponent: int = 1, per_image: bool = False,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if smooth < 0 or exponent not in (1, 2):
            raise ValueError(f"DiceLoss needs smooth >= 0 and exponent 1 or 2, got {smooth}, {exponent}")
        self.smooth = smooth
        self.exponent = exponent
        self.per_image = per_image
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> scalar loss."""
        check_pixel_inputs(logits, target, self.ignore_index, "DiceLoss")
        k = logits.shape[1]
        valid, safe = valid_and_safe_target(target, self.ignore_index)
        mask = valid.unsqueeze(1).to(torch.float32)
        probs = logits.float().softmax(dim=1) * mask
        onehot = F.one_hot(safe, k).permute(0, 3, 1, 2).to(torch.float32) * mask
        dims = (2, 3) if self.per_image else (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        card = (probs**self.exponent).sum(dims) + (onehot**self.exponent).sum(dims)
        dice = (2.0 * inter + self.smooth) / (card + self.smooth).clamp_min(1e-12)
        has_pixels = valid.flatten(1).any(1) if self.per_image else valid.any().view(1)
        loss = (1.0 - dice).view(-1, k) * has_pixels.unsqueeze(1)
        return loss.sum() / (k * has_pixels.sum()).clamp_min(1)
