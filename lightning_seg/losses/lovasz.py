"""Lovász-softmax loss (Berman et al., 2018): a convex surrogate of the per-class Jaccard loss."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seg.losses.pixel_inputs import check_pixel_inputs, valid_and_safe_target


def lovasz_softmax(probs: Tensor, target: Tensor, valid: Tensor, classes: Literal["present", "all"] = "present") -> Tensor:
    """Lovász-softmax per group, all classes at once.

    Args:
        probs: float ``[G, P, K]`` class probabilities of ``P`` pixels in ``G`` groups (images,
            or one group for the whole batch).
        target: int64 ``[G, P]`` class ids (any value where not ``valid``).
        valid: bool ``[G, P]`` labelled pixels.
        classes: average over the classes present in each group's target, or over all ``K``.

    Returns:
        float ``[G]`` loss per group, 0 for groups without labelled pixels (or, with
        ``"present"``, without any class present).
    """
    k = probs.shape[-1]
    fg = F.one_hot(target, k).to(probs.dtype) * valid.unsqueeze(-1)
    errors = (fg - probs).abs()
    # Unlabelled pixels sort last (error -1) and are zeroed below, so they never move the
    # Jaccard values of the labelled ones that precede them.
    errors = torch.where(valid.unsqueeze(-1), errors, torch.full_like(errors, -1.0))
    sorted_errors, order = errors.sort(dim=1, descending=True)
    fg_sorted = fg.gather(1, order)
    gts = fg_sorted.sum(1, keepdim=True)
    intersection = gts - fg_sorted.cumsum(1)
    union = gts + (1.0 - fg_sorted).cumsum(1)
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    per_class = (sorted_errors.clamp_min(0.0) * grad).sum(1)  # [G, K]
    if classes == "present":
        use = gts.squeeze(1) > 0
    else:
        use = valid.any(1, keepdim=True).expand(-1, k)
    use_f = use.to(per_class.dtype)
    return (per_class * use_f).sum(1) / use_f.sum(1).clamp_min(1.0)


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax loss on softmax probabilities, ignore-aware.

    Args:
        classes: ``"present"`` averages over classes present in the target (the paper's
            default), ``"all"`` over all ``K`` classes.
        per_image: compute per image and average over images with labelled pixels (instead
            of one loss over the whole batch's pixels).
        ignore_index: target value of void pixels.

    A batch with no labelled pixel gives 0 with a zero gradient.
    Shapes: logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> float scalar.
    """

    def __init__(self, classes: Literal["present", "all"] = "present", per_image: bool = False,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"LovaszSoftmaxLoss classes must be 'present' or 'all', got {classes!r}")
        self.classes = classes
        self.per_image = per_image
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> scalar loss."""
        check_pixel_inputs(logits, target, self.ignore_index, "LovaszSoftmaxLoss")
        b, k = logits.shape[:2]
        probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(b, -1, k)
        valid, safe = valid_and_safe_target(target, self.ignore_index)
        valid, safe = valid.reshape(b, -1), safe.reshape(b, -1)
        if not self.per_image:
            probs, valid, safe = probs.reshape(1, -1, k), valid.reshape(1, -1), safe.reshape(1, -1)
        losses = lovasz_softmax(probs, safe, valid, self.classes)
        counted = valid.any(1).to(losses.dtype)
        return (losses * counted).sum() / counted.sum().clamp_min(1.0)
