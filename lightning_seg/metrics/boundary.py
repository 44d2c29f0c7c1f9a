"""Boundary-quality metrics for semantic maps: Boundary IoU, trimap accuracy and ASSD.

All three work on whole label maps at once: whether a pixel lies near the edge of its own
class's region only depends on whether its neighbourhood holds another label, which a pair of
separable max / min pools answers for every class together.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from lightning_seg.structures import IGNORE_INDEX


def _window_not_uniform(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """bool ``[B, H, W]``: the ``(2r+1)^2`` window (clipped to the image) holds another label."""
    x = labels[:, None].float()
    k = 2 * radius + 1

    def max_pool(t: torch.Tensor) -> torch.Tensor:
        t = F.max_pool2d(t, (k, 1), stride=1, padding=(radius, 0))
        return F.max_pool2d(t, (1, k), stride=1, padding=(0, radius))

    return (max_pool(x) != -max_pool(-x))[:, 0]


def _near_border(shape: torch.Size, radius: int, device: torch.device) -> torch.Tensor:
    """bool ``[H, W]``: within ``radius`` pixels (Chebyshev) of the outside of the image."""
    h, w = shape[-2:]
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    r = (rows < radius) | (rows >= h - radius)
    c = (cols < radius) | (cols >= w - radius)
    return r[:, None] | c[None, :]


def boundary_dilation(height: int, width: int, dilation_ratio: float) -> int:
    """Band width in pixels: ``round(ratio * image diagonal)``, at least 1 (Cheng et al. 2021)."""
    return max(1, int(round(dilation_ratio * math.sqrt(height**2 + width**2))))


def inner_boundary(labels: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within ``radius`` of the edge of their own label's region.

    For every class ``c`` this is ``mask_c - erode(mask_c)`` of Boundary IoU, where the erosion
    uses a ``(2r+1)^2`` square and the outside of the image counts as "not ``c``".

    Args:
        labels: integer ``[B, H, W]`` label map.
        radius: band width ``r`` in pixels.

    Returns:
        bool ``[B, H, W]``; pixel ``p`` belongs to the band of class ``labels[p]``.
    """
    return _window_not_uniform(labels, radius) | _near_border(labels.shape, radius, labels.device)


def _check_maps(preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 3:
        raise ValueError(
            f"preds and target must both be [B,H,W]; got {tuple(preds.shape)} and {tuple(target.shape)}"
        )


class BoundaryIoU(Metric):
    """Boundary IoU (Cheng et al., CVPR 2021) per class for semantic label maps.

    For each class ``c``, ``G_d`` / ``P_d`` are the pixels of the ground-truth / predicted mask
    of ``c`` within ``d`` pixels of that mask's contour (``d`` = ``dilation_ratio`` times the
    image diagonal, at least 1; the image border counts as contour), and
    ``BIoU_c = |G_d ∩ P_d| / |G_d ∪ P_d|`` with both counts summed over the dataset. Pixels whose
    target is ``ignore_index`` are not counted (they still bound the regions around them).
    The reported ``biou`` is the mean over classes with a non-empty union.

    Maps should be unpadded (padding would count as a region edge and change the diagonal).

    Args:
        num_classes: ``K``.
        dilation_ratio: band width relative to the image diagonal (0.02 in the paper).
        ignore_index: void value of the target.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    intersection: torch.Tensor
    union: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        dilation_ratio: float = 0.02,
        ignore_index: int | None = IGNORE_INDEX,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.dilation_ratio = dilation_ratio
        self.ignore_index = ignore_index
        self.add_state("intersection", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate integer ``[B, H, W]`` predicted and target class maps."""
        _check_maps(preds, target)
        k = self.num_classes
        d = boundary_dilation(target.shape[-2], target.shape[-1], self.dilation_ratio)
        gt_band = inner_boundary(target, d)
        pred_band = inner_boundary(preds, d)
        valid = (target >= 0) & (target < k)
        if self.ignore_index is not None:
            valid &= target != self.ignore_index
        pred_ok = valid & (preds >= 0) & (preds < k)
        g = gt_band & valid
        p = pred_band & pred_ok
        both = g & p & (preds == target)
        gt_cls = target.clamp(0, k - 1).reshape(-1)
        pred_cls = preds.clamp(0, k - 1).reshape(-1)

        def count(cls: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(k, dtype=torch.int64, device=cls.device)
            return out.index_add_(0, cls, mask.reshape(-1).long())

        inter = count(gt_cls, both)
        self.intersection = self.intersection + inter
        self.union = self.union + count(gt_cls, g) + count(pred_cls, p) - inter

    def compute(self) -> dict[str, torch.Tensor]:
        """``biou`` (float64 mean over classes with a non-empty union) and ``per_class_biou``
        ``[K]`` (NaN where the union is empty)."""
        u = self.union.double()
        nan = torch.full_like(u, float("nan"))
        per_class = torch.where(u > 0, self.intersection.double() / u.clamp(min=1), nan)
        return {"biou": per_class.nanmean(), "per_class_biou": per_class}


class TrimapAccuracy(Metric):
    """Pixel accuracy inside a band around ground-truth boundaries (the "trimap" of DeepLab).

    The band holds the pixels whose ``(2w+1) x (2w+1)`` window in the target map contains more
    than one label (``ignore_index`` counting as a label), i.e. those within ``w`` pixels
    (Chebyshev) of a label change. Only non-ignored pixels of the band are scored.

    Args:
        band_width: ``w`` in pixels.
        ignore_index: void value of the target.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, band_width: int = 4, ignore_index: int | None = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if band_width < 1:
            raise ValueError(f"band_width must be at least 1, got {band_width}")
        self.band_width = band_width
        self.ignore_index = ignore_index
        self.add_state("correct", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate integer ``[B, H, W]`` predicted and target class maps."""
        _check_maps(preds, target)
        band = _window_not_uniform(target, self.band_width)
        if self.ignore_index is not None:
            band &= target != self.ignore_index
        self.correct = self.correct + (band & (preds == target)).sum()
        self.total = self.total + band.sum()

    def compute(self) -> torch.Tensor:
        """float64 accuracy in the band (NaN when the band was always empty)."""
        if int(self.total) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.correct.double() / self.total.double()


def surface(labels: torch.Tensor) -> torch.Tensor:
    """bool ``[B, H, W]``: pixels with a 4-neighbour of another label or on the image border."""
    x = labels
    edge = torch.zeros_like(x, dtype=torch.bool)
    edge[:, 1:, :] |= x[:, 1:, :] != x[:, :-1, :]
    edge[:, :-1, :] |= x[:, :-1, :] != x[:, 1:, :]
    edge[:, :, 1:] |= x[:, :, 1:] != x[:, :, :-1]
    edge[:, :, :-1] |= x[:, :, :-1] != x[:, :, 1:]
    edge[:, 0, :] = True
    edge[:, -1, :] = True
    edge[:, :, 0] = True
    edge[:, :, -1] = True
    return edge


def _nearest_distance(
    src: torch.Tensor,
    src_group: torch.Tensor,
    dst: torch.Tensor,
    dst_group: torch.Tensor,
    chunk_elems: int,
) -> torch.Tensor:
    """For each ``src`` point, the Euclidean distance to the nearest ``dst`` point of its group."""
    out = torch.empty(src.shape[0], dtype=torch.float64, device=src.device)
    rows = max(1, chunk_elems // max(1, dst.shape[0]))
    for start in range(0, src.shape[0], rows):  # chunks bound memory; not a loop over points
        s = src[start : start + rows]
        d2 = torch.cdist(s, dst).square()
        d2.masked_fill_(src_group[start : start + rows, None] != dst_group[None, :], float("inf"))
        out[start : start + rows] = d2.min(dim=1).values.sqrt()
    return out


class AverageSurfaceDistance(Metric):
    """Average symmetric surface distance (ASSD) per class, in pixels.

    Per image and class ``c`` present in both maps: the surfaces ``S_G``, ``S_P`` are the pixels
    of each mask with a 4-neighbour outside it (the image border included); every surface pixel
    contributes its distance to the nearest pixel of the other surface, and
    ``ASSD_c = (sum_{S_P} d(., S_G) + sum_{S_G} d(., S_P)) / (|S_P| + |S_G|)`` over the dataset.
    An image where ``c`` appears in only one of the two maps has no defined distance; it is
    counted in ``unmatched_per_class`` instead. Target pixels equal to ``ignore_index`` belong to
    no class (they still bound the regions around them).

    Cost is ``O(|S_P| |S_G|)`` per batch (chunked ``cdist``), fine at validation sizes.

    Args:
        num_classes: ``K``.
        ignore_index: void value of the target.
        chunk_elems: distance-matrix elements computed at once (memory bound).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    distance_sum: torch.Tensor
    point_count: torch.Tensor
    unmatched: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        chunk_elems: int = 1 << 24,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.chunk_elems = chunk_elems
        self.add_state("distance_sum", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("point_count", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("unmatched", torch.zeros(num_classes, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate integer ``[B, H, W]`` predicted and target class maps."""
        _check_maps(preds, target)
        k = self.num_classes
        b = target.shape[0]

        def points(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            valid = (labels >= 0) & (labels < k)
            if self.ignore_index is not None:
                valid &= labels != self.ignore_index
            img, y, x = torch.nonzero(surface(labels) & valid, as_tuple=True)
            group = img * k + labels[img, y, x].long()
            return torch.stack([y, x], 1).double(), group

        gp, gg = points(target)
        pp, pg = points(preds)
        device = target.device
        has_g = torch.zeros(b * k, dtype=torch.bool, device=device)
        has_p = torch.zeros(b * k, dtype=torch.bool, device=device)
        has_g[gg] = True
        has_p[pg] = True
        both = has_g & has_p
        self.unmatched = self.unmatched + (has_g ^ has_p).reshape(b, k).sum(0)
        total = torch.zeros(k, dtype=torch.float64, device=device)
        count = torch.zeros(k, dtype=torch.int64, device=device)
        for src, sg, dst, dg in ((pp, pg, gp, gg), (gp, gg, pp, pg)):
            keep = both[sg]
            src, sg = src[keep], sg[keep]
            if src.shape[0] == 0:
                continue
            dist = _nearest_distance(src, sg, dst, dg, self.chunk_elems)
            total.index_add_(0, sg % k, dist)
            count.index_add_(0, sg % k, torch.ones_like(sg))
        self.distance_sum = self.distance_sum + total
        self.point_count = self.point_count + count

    def compute(self) -> dict[str, torch.Tensor]:
        """``assd`` (mean over classes with distances), ``per_class_assd`` ``[K]`` (NaN where
        undefined) and ``unmatched_per_class`` ``[K]``."""
        c = self.point_count.double()
        nan = torch.full_like(c, float("nan"))
        per_class = torch.where(c > 0, self.distance_sum / c.clamp(min=1), nan)
        return {
            "assd": per_class.nanmean(),
            "per_class_assd": per_class,
            "unmatched_per_class": self.unmatched,
        }
