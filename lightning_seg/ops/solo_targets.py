"""SOLO / SOLOv2 grid targets for a whole batch at once.

The rules are those of the SOLO papers' code (mmdetection's ``SOLOHead._get_targets_single``):
an instance belongs to every level whose scale range holds ``sqrt(w * h)`` of its box (the
ranges overlap, so it can be positive on two levels); on an ``S x S`` grid over the padded
input its centre cell holds the mask's centre of mass, its centre region reaches ``pos_scale``
(0.2) of the half box size around it, clipped to the 3x3 cells around the centre cell, and every
cell of that region is positive with the instance's class and mask. Where regions of several
instances meet, the later instance (in ground-truth order) takes the cell's class (and, for
SOLO, its mask), as the reference's in-place writes do; SOLOv2 keeps a mask target for every
(instance, cell) pair, returned as pair lists. Instances with empty masks are skipped.

The reference loops over images, levels and instances; here each level is one scatter over
the (instance, cell) pairs of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["SOLOTargets", "mask_centers", "solo_targets"]


class SOLOTargets(NamedTuple):
    """Targets of one level.

    Attributes:
        labels: int64 ``[B, S, S]`` class of every cell (``num_classes`` = background).
        instance: int64 ``[B, S, S]`` ground-truth column of every positive cell (-1 elsewhere):
            the later instance where regions meet (SOLO's mask targets, written in place).
        pair_image, pair_instance, pair_cell: int64 ``[P]`` every (image, ground-truth column,
            flat cell ``i * S + j``) of every centre region, by image, column and row-major cell:
            SOLOv2's mask targets, which keep one entry per pair, so a shared cell trains on
            the masks of every instance whose region covers it.
    """

    labels: torch.Tensor
    instance: torch.Tensor
    pair_image: torch.Tensor
    pair_instance: torch.Tensor
    pair_cell: torch.Tensor


def mask_centers(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres of mass (in pixel indices) and areas of binary masks.

    The moments are exact integer sums divided once, as the reference's ``center_of_mass``.

    Args:
        masks: bool ``[N, H, W]``.

    Returns:
        ``(center_y, center_x, area)``: float32 ``[N]``, float32 ``[N]`` (NaN for empty masks),
        int64 ``[N]``.
    """
    n, h, w = masks.shape
    rows = masks.sum(2)  # int64 [N, H]
    cols = masks.sum(1)  # int64 [N, W]
    area = rows.sum(1)
    cy = (rows * torch.arange(h, device=masks.device)).sum(1) / area
    cx = (cols * torch.arange(w, device=masks.device)).sum(1) / area
    return cy.float(), cx.float(), area


@torch.no_grad()
def solo_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    masks: torch.Tensor,
    mask_index: torch.Tensor,
    input_size: tuple[int, int],
    num_classes: int,
    grid_numbers: Sequence[int] = (40, 36, 24, 16, 12),
    scale_ranges: Sequence[tuple[float, float]] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)),
    pos_scale: float = 0.2,
) -> list[SOLOTargets]:
    """Grid targets of every level for a batch.

    Args:
        boxes: float ``[B, G, 4]`` xyxy ground-truth boxes in input pixels.
        labels: int64 ``[B, G]`` classes.
        valid: bool ``[B, G]`` real columns.
        masks: bool ``[M, Hp, Wp]`` ground-truth masks at the padded input size.
        mask_index: int64 ``[B, G]`` row of each column's mask in ``masks`` (-1 for padding).
        input_size: ``(Hp, Wp)`` the grid spans (the padded input).
        num_classes: ``K``, the background label.
        grid_numbers: ``S`` of each level.
        scale_ranges: ``(low, high)`` of ``sqrt(w * h)`` of each level (inclusive).
        pos_scale: the centre region's share of the half box size.

    Returns:
        one :class:`SOLOTargets` per level.
    """
    if len(grid_numbers) != len(scale_ranges):
        raise ValueError(f"{len(grid_numbers)} grid numbers but {len(scale_ranges)} scale ranges")
    b, g = valid.shape
    dev = boxes.device
    hp, wp = input_size
    if g == 0:
        none = torch.zeros(0, dtype=torch.int64, device=dev)
        return [SOLOTargets(torch.full((b, s, s), num_classes, dtype=torch.int64, device=dev),
                            torch.full((b, s, s), -1, dtype=torch.int64, device=dev), none, none, none)
                for s in grid_numbers]
    cy = torch.full((b, g), float("nan"), device=dev)
    cx = torch.full((b, g), float("nan"), device=dev)
    has_mask = torch.zeros(b, g, dtype=torch.bool, device=dev)
    bi, gi = torch.nonzero(valid & (mask_index >= 0), as_tuple=True)
    if bi.numel():
        ys, xs, area = mask_centers(masks[mask_index[bi, gi]])
        cy[bi, gi], cx[bi, gi] = ys, xs
        has_mask[bi, gi] = area > 0
    boxes = boxes.float()
    scale = torch.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    half_h = 0.5 * (boxes[..., 3] - boxes[..., 1]) * pos_scale
    half_w = 0.5 * (boxes[..., 2] - boxes[..., 0]) * pos_scale
    offsets = torch.tensor([-1, 0, 1], device=dev)
    out = []
    for s, (low, high) in zip(grid_numbers, scale_ranges):
        cell = 1.0 / s
        # the reference's float32 arithmetic: trunc((position / size) / (1 / S))
        def to_cell(v: torch.Tensor, size: int) -> torch.Tensor:
            return torch.div(v / size, cell, rounding_mode="trunc").long()

        hit = valid & has_mask & (scale >= low) & (scale <= high)
        coord_h, coord_w = to_cell(cy, hp), to_cell(cx, wp)
        top = torch.maximum(to_cell(cy - half_h, hp).clamp(min=0), coord_h - 1)
        down = torch.minimum(to_cell(cy + half_h, hp).clamp(max=s - 1), coord_h + 1)
        left = torch.maximum(to_cell(cx - half_w, wp).clamp(min=0), coord_w - 1)
        right = torch.minimum(to_cell(cx + half_w, wp).clamp(max=s - 1), coord_w + 1)
        # every (instance, 3x3 neighbour) pair inside its region
        ii = coord_h[..., None, None] + offsets[:, None]  # [B, G, 3, 1]
        jj = coord_w[..., None, None] + offsets[None, :]  # [B, G, 1, 3]
        inside = ((ii >= top[..., None, None]) & (ii <= down[..., None, None])
                  & (jj >= left[..., None, None]) & (jj <= right[..., None, None]) & hit[..., None, None])
        pb, pg, pi, pj = torch.nonzero(inside, as_tuple=True)
        flat = (pb * s + (coord_h[pb, pg] + offsets[pi])) * s + (coord_w[pb, pg] + offsets[pj])
        # the later ground truth takes a shared cell, as in-place writes in column order do
        owner = torch.full((b * s * s,), -1, dtype=torch.int64, device=dev)
        owner.scatter_reduce_(0, flat, pg, reduce="amax")
        owner = owner.view(b, s, s)
        cls = labels.long().gather(1, owner.clamp(min=0).view(b, -1)).view(b, s, s)
        cell_of_pair = (coord_h[pb, pg] + offsets[pi]) * s + (coord_w[pb, pg] + offsets[pj])
        out.append(SOLOTargets(torch.where(owner >= 0, cls, num_classes), owner, pb, pg, cell_of_pair))
    return out
