"""Per-term loss weights of the criteria that return their terms unweighted, with deep supervision."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class TermWeights:
    """Mixin: ``self.weights`` maps base term names (``loss_dice``) to weights; a term of decoder
    layer or stage ``i`` is named ``<base>_<i>`` and has the base term's weight."""

    weights: dict[str, float]

    def weight_of(self, name: str) -> float:
        """Weight of a loss term by name (``loss_dice`` or ``loss_dice_3`` → dice weight)."""
        for base, w in self.weights.items():
            if name == base or (name.startswith(base + "_") and name[len(base) + 1 :].isdigit()):
                return w
        raise KeyError(f"unknown loss term {name!r}; terms are {tuple(self.weights)} with optional _<layer>")

    def weighted(self, losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each term times its weight (same keys)."""
        return {k: self.weight_of(k) * v for k, v in losses.items()}

    def total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the terms (float32 scalar)."""
        return sum(self.weighted(losses).values())  # type: ignore[return-value]
