"""Online hard example mining cross-entropy (as in mmsegmentation's OHEM pixel sampler)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_seg.losses.class_weights import WeightMethod, resolve_class_weights
from lightning_seg.losses.pixel_inputs import masked_mean, valid_and_safe_target, weighted_pixel_cross_entropy


def ohem_keep_mask(logits: Tensor, target: Tensor, ignore_index: int, threshold: float | None,
                   min_kept: int, per_pixel_loss: Tensor | None = None) -> Tensor:
    """Bool ``[B, H, W]``: the hard labelled pixels OHEM trains on (no gradient flows through it).

    With a ``threshold``: pixels whose true-class probability is below
    ``max(threshold, p_(m))``, where ``p_(m)`` is the ``m``-th smallest true-class probability
    (0-based, ``m = min(min_kept * B, n_labelled - 1)``), so at least about ``min_kept`` pixels
    per image are kept even when the model is confident. Without a threshold: the
    ``min_kept * B`` labelled pixels with the largest ``per_pixel_loss``.

    Args:
        logits: float ``[B, K, H, W]``.
        target: int64 ``[B, H, W]``.
        ignore_index: void value, never kept.
        threshold: probability threshold in ``(0, 1]`` or ``None`` for plain top-k.
        min_kept: pixels kept per image (at least).
        per_pixel_loss: float ``[B, H, W]``, needed when ``threshold`` is ``None``.
    """
    with torch.no_grad():
        valid, safe = valid_and_safe_target(target, ignore_index)
        batch_kept = min_kept * target.shape[0]
        if threshold is not None:
            prob = logits.float().softmax(1).gather(1, safe.unsqueeze(1)).squeeze(1)
            ranked = torch.where(valid, prob, torch.full_like(prob, float("inf"))).flatten().sort().values
            n_valid = valid.sum()
            index = torch.minimum(torch.full_like(n_valid, batch_kept), n_valid - 1).clamp_min(0)
            kth = ranked.gather(0, index.view(1)).squeeze(0)
            cut = torch.maximum(kth, torch.full_like(kth, threshold))
            return valid & (prob < cut)
        if per_pixel_loss is None:
            raise ValueError("ohem_keep_mask needs per_pixel_loss when threshold is None")
        scores = torch.where(valid, per_pixel_loss.detach(), torch.full_like(per_pixel_loss, -float("inf"))).flatten()
        k = min(batch_kept, scores.numel())
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[scores.topk(k).indices] = True
        return keep.view_as(valid) & valid


class OhemCrossEntropyLoss(nn.Module):
    """Cross-entropy averaged over the hard pixels chosen by :func:`ohem_keep_mask`.

    Args:
        threshold: keep pixels whose true-class probability is below this (0.7 in the
            mmsegmentation / PSPNet-OHEM setups); ``None`` keeps the ``min_kept`` per image with
            the largest loss.
        min_kept: pixels kept per image at least (top-k size without a threshold).
        ignore_index: target value of void pixels.
        class_weights: per-class weights ``[K]`` or a pixel-count cache path (see
            :class:`~lightning_seg.losses.cross_entropy.CrossEntropyLoss`).
        class_weight_method: how a count cache becomes weights.

    The mean over kept pixels is weighted like weighted cross-entropy; no kept pixel gives 0.
    Shapes: logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> float scalar.
    """

    def __init__(self, threshold: float | None = 0.7, min_kept: int = 100_000, ignore_index: int = 255,
                 class_weights: Sequence[float] | str | None = None,
                 class_weight_method: WeightMethod = "median_frequency") -> None:
        super().__init__()
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"OhemCrossEntropyLoss threshold must be in (0, 1], got {threshold}")
        if min_kept < 1:
            raise ValueError(f"OhemCrossEntropyLoss min_kept must be >= 1, got {min_kept}")
        self.threshold = threshold
        self.min_kept = min_kept
        self.ignore_index = ignore_index
        weights = resolve_class_weights(class_weights, class_weight_method)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> scalar loss."""
        logits, per_pixel = weighted_pixel_cross_entropy(
            logits, target, self.class_weights, self.ignore_index, type(self).__name__
        )
        keep = ohem_keep_mask(logits, target, self.ignore_index, self.threshold, self.min_kept, per_pixel)
        weights = keep.to(logits.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights[valid_and_safe_target(target, self.ignore_index)[1]]
        return masked_mean(per_pixel * keep, weights)
