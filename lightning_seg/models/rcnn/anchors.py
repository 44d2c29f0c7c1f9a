"""Anchors of every pyramid level, one set shared by all images of a batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class AnchorGrid(nn.Module):
    """Anchor boxes centred on every feature cell of each level.

    Cell anchors of a level are ``[-w/2, -h/2, w/2, h/2]`` for each (size, aspect ratio) pair,
    ``h / w = ratio`` and ``w * h = size**2``, shifted by ``stride * (i + offset)``. Order:
    level, then cell (row-major), then anchor (size-major), the order in which the RPN head's
    outputs are flattened.

    Args:
        sizes: anchor sizes per level, e.g. ``((32,), (64,), (128,), (256,), (512,))``.
        aspect_ratios: height / width ratios, the same at every level.
        strides: stride of each level.
        offset: cell-centre offset in strides (detectron2 and torchvision: 0).
        round_cells: round the cell anchors to integers (torchvision) or keep them exact
            (detectron2).
        square: square anchors whose side is the width a ratio gives, ``size / sqrt(ratio)``
            (YOLACT's ``use_square_anchors``).
        fractional_strides: shift by ``padded_size / feature_size`` per axis, unrounded, so the
            cells tile the input exactly (YOLACT's priors at ``(i + 0.5) / conv_size``).
        stride_from_sizes: shift by ``padded_size // feature_size`` per axis (torchvision, e.g.
            61 for P6 of an 800-pixel input) rather than the nominal stride.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[float],
        strides: Sequence[int],
        offset: float = 0.0,
        round_cells: bool = False,
        stride_from_sizes: bool = False,
        square: bool = False,
        fractional_strides: bool = False,
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"anchor_sizes has {len(sizes)} levels but the pyramid has {len(strides)}")
        self.strides = [int(s) for s in strides]
        self.offset = offset
        self.stride_from_sizes = stride_from_sizes
        self.fractional_strides = fractional_strides
        cells = []
        for level_sizes in sizes:
            rows = []
            for size in level_sizes:
                for ratio in aspect_ratios:
                    w = math.sqrt(size * size / ratio)
                    h = w if square else ratio * w
                    rows.append([-w / 2, -h / 2, w / 2, h / 2])
            cell = torch.tensor(rows, dtype=torch.float32)
            cells.append(cell.round() if round_cells else cell)
        self.num_anchors = cells[0].shape[0]
        if any(c.shape[0] != self.num_anchors for c in cells):
            raise ValueError("every level needs the same number of anchors (sizes per level x aspect ratios)")
        for i, c in enumerate(cells):
            self.register_buffer(f"cell{i}", c, persistent=False)
        self._cache: dict[tuple, list[Tensor]] = {}

    def _axes(self, feature_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int]) -> list[tuple[Tensor, Tensor]]:
        """Cell-centre coordinates ``(ys [h_l], xs [w_l])`` of each level."""
        device = self.cell0.device
        out = []
        for (h, w), stride in zip(feature_sizes, self.strides):
            if self.fractional_strides:
                sy, sx = padded_size[0] / h, padded_size[1] / w
            elif self.stride_from_sizes:
                sy, sx = padded_size[0] // h, padded_size[1] // w
            else:
                sy, sx = stride, stride
            ys = (torch.arange(h, device=device, dtype=torch.float32) + self.offset) * sy
            xs = (torch.arange(w, device=device, dtype=torch.float32) + self.offset) * sx
            out.append((ys, xs))
        return out

    def iou(self, boxes: Tensor, feature_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int]) -> Tensor:
        """IoU of ``boxes`` with every anchor, from the grid's separable structure.

        The intersection of a box with anchor (row i, column j, shape a) is the product of a
        height overlap that depends on (i, a) and a width overlap that depends on (j, a), so it
        costs one multiply per anchor instead of ``torchvision.ops.box_iou``'s dozen passes
        (same values up to float rounding).

        Args:
            boxes: float ``[N, 4]`` xyxy.
            feature_sizes, padded_size: as in :meth:`forward`.

        Returns:
            float ``[N, A_total]`` in the anchor order of :meth:`forward` (0 for empty boxes).
        """
        n = boxes.shape[0]
        bx1, by1, bx2, by2 = (boxes[:, k, None, None] for k in range(4))
        area_b = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[:, None]
        out = []
        for i, (ys, xs) in enumerate(self._axes(feature_sizes, padded_size)):
            cell = getattr(self, f"cell{i}")
            ax1, ay1 = xs[:, None] + cell[:, 0], ys[:, None] + cell[:, 1]
            ax2, ay2 = xs[:, None] + cell[:, 2], ys[:, None] + cell[:, 3]
            iw = (torch.minimum(bx2, ax2) - torch.maximum(bx1, ax1)).clamp(min=0)  # [N, w, A]
            ih = (torch.minimum(by2, ay2) - torch.maximum(by1, ay1)).clamp(min=0)  # [N, h, A]
            inter = (ih[:, :, None, :] * iw[:, None, :, :]).reshape(n, -1)
            area_a = ((cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1]))
            total = (area_b + area_a).repeat(1, ih.shape[1] * iw.shape[1])
            out.append(inter / (total - inter))
        return torch.cat(out, 1)

    def forward(self, feature_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int]) -> list[Tensor]:
        """Anchors of each level.

        Args:
            feature_sizes: ``(h_l, w_l)`` of each level.
            padded_size: ``(H, W)`` of the padded input batch.

        Returns:
            float ``[h_l * w_l * A, 4]`` xyxy anchors per level, ``A`` = :attr:`num_anchors`.
        """
        device = self.cell0.device
        key = (tuple(map(tuple, feature_sizes)), tuple(padded_size), device)
        if key not in self._cache:
            if len(self._cache) > 32:
                self._cache.clear()
            out = []
            for i, (ys, xs) in enumerate(self._axes(feature_sizes, padded_size)):
                yy, xx = torch.meshgrid(ys, xs, indexing="ij")
                shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
                out.append((shifts + getattr(self, f"cell{i}")[None]).reshape(-1, 4))
            self._cache[key] = out
        return self._cache[key]
