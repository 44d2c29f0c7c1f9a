"""Lovász-softmax loss (Berman et al., 2018): a convex surrogate of the per-class Jaccard loss."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seg.losses.pixel_inputs import check_pixel_inputs, valid_and_safe_target


def _lovasz_per_class(probs: Tensor, fg: Tensor, valid: Tensor) -> Tensor:
    """Lovász extension of the Jaccard loss per group and class: ``[G, P, C]`` inputs -> ``[G, C]``."""
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
    return (sorted_errors.clamp_min(0.0) * grad).sum(1)


def lovasz_softmax(probs: Tensor, target: Tensor, valid: Tensor,
                   classes: Literal["present", "all"] = "present", class_chunk: int | None = None) -> Tensor:
    """Lovász-softmax per group, classes processed together (or in chunks to bound memory).

    Args:
        probs: float ``[G, P, K]`` class probabilities of ``P`` pixels in ``G`` groups (images,
            or one group for the whole batch).
        target: int64 ``[G, P]`` class ids (any value where not ``valid``).
        valid: bool ``[G, P]`` labelled pixels.
        classes: average over the classes present in each group's target, or over all ``K``.
        class_chunk: sort at most this many classes at once (the sort needs about
            ``G * P * class_chunk * 24`` bytes); ``None`` = all ``K`` at once.

    Returns:
        float ``[G]`` loss per group, 0 for groups without labelled pixels (or, with
        ``"present"``, without any class present).
    """
    k = probs.shape[-1]
    step = k if class_chunk is None else max(int(class_chunk), 1)
    losses, counts = [], []
    for c in range(0, k, step):
        ids = torch.arange(c, min(c + step, k), device=target.device)
        fg = ((target.unsqueeze(-1) == ids) & valid.unsqueeze(-1)).to(probs.dtype)  # [G, P, C]
        losses.append(_lovasz_per_class(probs[..., c:c + step], fg, valid))
        counts.append(fg.sum(1))
    per_class = torch.cat(losses, dim=1)  # [G, K]
    if classes == "present":
        use = torch.cat(counts, dim=1) > 0
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
        class_chunk: classes sorted at once (bounds memory at ``B*H*W*class_chunk*24`` bytes;
            ``None`` = all classes in one sort).

    A batch with no labelled pixel gives 0 with a zero gradient.
    Shapes: logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> float scalar.
    """

    def __init__(self, classes: Literal["present", "all"] = "present", per_image: bool = False,
                 ignore_index: int = 255, class_chunk: int | None = 16) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"LovaszSoftmaxLoss classes must be 'present' or 'all', got {classes!r}")
        self.classes = classes
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.class_chunk = class_chunk

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Logits float ``[B, K, H, W]``, target int64 ``[B, H, W]`` -> scalar loss."""
        check_pixel_inputs(logits, target, self.ignore_index, "LovaszSoftmaxLoss")
        b, k = logits.shape[:2]
        probs = logits.float().softmax(1).permute(0, 2, 3, 1).reshape(b, -1, k)
        valid, safe = valid_and_safe_target(target, self.ignore_index)
        valid, safe = valid.reshape(b, -1), safe.reshape(b, -1)
        if not self.per_image:
            probs, valid, safe = probs.reshape(1, -1, k), valid.reshape(1, -1), safe.reshape(1, -1)
        losses = lovasz_softmax(probs, safe, valid, self.classes, self.class_chunk)
        counted = valid.any(1).to(losses.dtype)
        return (losses * counted).sum() / counted.sum().clamp_min(1.0)
