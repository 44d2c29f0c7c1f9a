"""Weighted sums of per-pixel losses, configurable from YAML."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import Tensor, nn


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class CombinedLoss(nn.Module):
    """``sum_i weights[i] * losses[i](logits, target)``, configurable from YAML.

    Example (LightningCLI)::

        loss:
          class_path: lightning_seg.losses.CombinedLoss
          init_args:
            losses:
              - class_path: lightning_seg.losses.CrossEntropyLoss
              - class_path: lightning_seg.losses.DiceLoss
            weights: [1.0, 0.5]

    Args:
        losses: per-pixel losses ``(logits [B,K,H,W], target [B,H,W]) -> scalar``.
        weights: one weight per loss (default all 1).
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(losses) == 0:
            raise ValueError("CombinedLoss needs at least one loss")
        weights = [1.0] * len(losses) if weights is None else [float(w) for w in weights]
        if len(weights) != len(losses):
            raise ValueError(f"CombinedLoss got {len(losses)} losses but {len(weights)} weights")
        self.losses = nn.ModuleList(losses)
        self.weights = weights
        names: list[str] = []
        for loss in losses:
            base = _snake(type(loss).__name__)
            name, i = base, 1
            while name in names:
                i += 1
                name = f"{base}_{i}"
            names.append(name)
        self.names = names

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each unweighted loss by name (``cross_entropy_loss``, ``dice_loss``, ...), for logging."""
        return {name: loss(logits, target) for name, loss in zip(self.names, self.losses)}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> weighted sum, scalar."""
        total = None
        for w, loss in zip(self.weights, self.losses):
            value = w * loss(logits, target)
            total = value if total is None else total + value
        return total
