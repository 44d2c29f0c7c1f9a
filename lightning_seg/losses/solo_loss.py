"""SOLO / SOLOv2 losses: focal loss on the grid categories, dice loss on the masks of positive cells.

Following the SOLO papers' code (mmdetection's ``SOLOHead`` / ``SOLOV2Head.loss_by_feat``): the
category loss is the sigmoid focal loss (gamma 2, alpha 0.25) summed over every cell and class
of every level and divided by the number of positive cells + 1; the mask loss is
``1 - 2 sum(p q) / (sum(p^2) + sum(q^2) + 2 eps)`` per predicted mask, summed and divided by the
number of positive cells, weight 3. SOLO trains one mask per positive cell (the instance that
owns it); SOLOv2 one per (instance, cell) pair of every centre region.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from lightning_seg.ops.solo_targets import solo_targets

__all__ = ["SOLOCriterion", "dice_loss_per_mask", "downsample_masks"]


class GridMaskOutputs(Protocol):
    """What :class:`SOLOCriterion` reads from a model's outputs
    (:class:`~lightning_seg.models.dense_instance.GridOutputs`)."""

    category_logits: list[Tensor]
    kind: str
    padded_size: tuple[int, int]

    def mask_size(self, level: int) -> tuple[int, int]: ...

    def mask_probs(self, level: int, image_index: Tensor, cell: Tensor) -> Tensor: ...

    def zero_mask_term(self) -> Tensor: ...


def dice_loss_per_mask(probs: Tensor, targets: Tensor, eps: float = 1e-3) -> Tensor:
    """SOLO's dice loss of each mask: float ``[N]`` from probabilities and binary targets
    float ``[N, h, w]``: ``1 - 2 sum(pq) / (sum(p^2) + eps + sum(q^2) + eps)``."""
    p, q = probs.flatten(1).float(), targets.flatten(1).float()
    return 1 - 2 * (p * q).sum(1) / ((p * p).sum(1) + eps + (q * q).sum(1) + eps)


def downsample_masks(masks: Tensor, size: tuple[int, int], strict: bool = False) -> Tensor:
    """Binary masks bool ``[M, H, W]`` -> float ``[M, h, w]``: bilinear (half-pixel) resizing of
    the 0/1 values, on where >= 0.5 (SOLO: OpenCV's rounding of resized 0/1 masks) or, with
    ``strict``, where > 0.5 (YOLACT's ``gt(0.5)``)."""
    if masks.shape[0] == 0:
        return masks.new_zeros(0, *size, dtype=torch.float32)
    small = F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return (small > 0.5 if strict else small >= 0.5).float()


class SOLOCriterion(nn.Module):
    """Targets and losses of SOLO, decoupled SOLO and SOLOv2 for a batch.

    Args:
        num_classes: ``K``.
        grid_numbers, scale_ranges, pos_scale: the grid targets (see
            :func:`~lightning_seg.ops.solo_targets`).
        focal_alpha, focal_gamma: the focal loss.
        category_loss_weight, mask_loss_weight: term weights (1, 3).
        dice_eps: see :func:`dice_loss_per_mask`.
    """

    def __init__(self, num_classes: int, grid_numbers, scale_ranges, pos_scale: float = 0.2,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, category_loss_weight: float = 1.0,
                 mask_loss_weight: float = 3.0, dice_eps: float = 1e-3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.grid_numbers = tuple(int(g) for g in grid_numbers)
        self.scale_ranges = tuple(tuple(r) for r in scale_ranges)
        self.pos_scale = pos_scale
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.category_loss_weight, self.mask_loss_weight = category_loss_weight, mask_loss_weight
        self.dice_eps = dice_eps

    def forward(self, outputs: GridMaskOutputs, boxes: Tensor, labels: Tensor, valid: Tensor, masks: Tensor,
                mask_index: Tensor) -> dict[str, Tensor]:
        """``{"loss_category", "loss_mask"}`` weighted float scalars.

        Args:
            outputs: the model's :class:`~lightning_seg.models.dense_instance.GridOutputs`.
            boxes: float ``[B, G, 4]`` xyxy ground truth in input pixels; labels int64 ``[B, G]``;
                valid bool ``[B, G]``.
            masks: bool ``[M, Hp, Wp]`` ground-truth masks at the padded input size.
            mask_index: int64 ``[B, G]`` row of each column's mask (-1 for padding).
        """
        k = self.num_classes
        levels = solo_targets(boxes, labels, valid, masks, mask_index, outputs.padded_size, k, self.grid_numbers,
                              self.scale_ranges, self.pos_scale)
        cat_logits = torch.cat([x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, k) for x in outputs.category_logits], 1)
        cat_labels = torch.cat([t.labels.flatten(1) for t in levels], 1)
        num_pos = (cat_labels < k).sum()
        one_hot = F.one_hot(cat_labels, k + 1)[..., :k].to(cat_logits.dtype)
        loss_cat = sigmoid_focal_loss(cat_logits.float(), one_hot.float(), self.focal_alpha, self.focal_gamma,
                                      reduction="sum") / (num_pos + 1).float()
        dice_sum = outputs.zero_mask_term()
        for level, t in enumerate(levels):
            if outputs.kind == "solov2":
                img, col, cell = t.pair_image, t.pair_instance, t.pair_cell
            else:
                img, cell = torch.nonzero(t.instance.flatten(1) >= 0, as_tuple=True)
                col = t.instance.flatten(1)[img, cell]
            if img.numel() == 0:
                continue
            # only the ground truth this level trains, each mask resized once
            rows, inverse = torch.unique(mask_index[img, col], return_inverse=True)
            targets = downsample_masks(masks[rows], outputs.mask_size(level))[inverse]
            probs = outputs.mask_probs(level, img, cell)
            dice_sum = dice_sum + dice_loss_per_mask(probs, targets, self.dice_eps).sum()
        loss_mask = dice_sum / num_pos.clamp(min=1).float()
        return {"loss_category": loss_cat * self.category_loss_weight, "loss_mask": loss_mask * self.mask_loss_weight}
