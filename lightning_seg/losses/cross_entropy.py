"""Pixel-wise cross-entropy with ignore_index, optional class weights and label smoothing."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lightning_seg.losses.class_weights import WeightMethod, resolve_class_weights
from lightning_seg.losses.pixel_inputs import masked_mean, valid_and_safe_target, weighted_pixel_cross_entropy


class CrossEntropyLoss(nn.Module):
    """Mean cross-entropy over non-ignored pixels, optionally class-weighted.

    Equals ``F.cross_entropy(logits, target, weight, ignore_index=..., reduction="mean")``
    (the weighted mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}``), except that a batch with no
    labelled pixel gives 0 with a zero gradient instead of NaN.

    Args:
        ignore_index: target value of void pixels.
        class_weights: per-class weights ``[K]``, or the path of a pixel-count cache written by
            :func:`~lightning_seg.losses.class_weights.compute_class_weights`; ``None`` = 1.
        class_weight_method: how a count cache becomes weights (``"inverse"``,
            ``"median_frequency"``, ``"enet"``).
        label_smoothing: PyTorch's label smoothing in ``[0, 1)``.

    Shapes: logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> float scalar.
    """

    def __init__(self, ignore_index: int = 255, class_weights: Sequence[float] | str | None = None,
                 class_weight_method: WeightMethod = "median_frequency", label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        weights = resolve_class_weights(class_weights, class_weight_method)
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> scalar loss."""
        logits, per_pixel = weighted_pixel_cross_entropy(
            logits, target, self.class_weights, self.ignore_index, type(self).__name__, self.label_smoothing
        )
        valid, safe = valid_and_safe_target(target, self.ignore_index)
        weights = valid.to(logits.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights[safe]
        return masked_mean(per_pixel, weights)
