"""Scoring unsupervised segments against classes, as the unsupervised-segmentation literature does.

Clusters whose ids mean the same thing in every image are given classes by a one-to-one
Hungarian matching on the (cluster, class) confusion matrix accumulated over the whole split
(PiCIE, STEGO); segments whose ids are per image only (superpixels, watershed basins) each take
the class most of their pixels have (the many-to-one "oracle" labelling of superpixel
benchmarks, an upper bound). Then the usual semantic metrics are computed on the mapped maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torchmetrics import Metric

from lightning_seg.metrics.semantic import semantic_scores
from lightning_seg.ops.linear_assignment import solve_assignment

__all__ = ["ClusterMatchedIoU", "assign_clusters_to_classes", "cluster_confusion", "map_clusters"]


def cluster_confusion(clusters: torch.Tensor, target: torch.Tensor, num_clusters: int, num_classes: int,
                      ignore_index: int = 255) -> torch.Tensor:
    """Pixel counts of (cluster, class) pairs over a batch of maps.

    Args:
        clusters: int64 ``[B, H, W]`` (or any shape) cluster ids in ``[0, num_clusters)``.
        target: int64, same shape, class ids in ``[0, num_classes)`` or ``ignore_index``.
        num_clusters, num_classes: ``C``, ``K``.
        ignore_index: void label, not counted.

    Returns:
        int64 ``[C, K]`` (sum it over batches and, in DDP, over ranks before matching).
    """
    if clusters.shape != target.shape:
        raise ValueError(f"cluster_confusion: clusters {tuple(clusters.shape)} and target {tuple(target.shape)} differ")
    keep = target != ignore_index
    c, t = clusters[keep], target[keep]
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= num_clusters or int(t.min()) < 0
                      or int(t.max()) >= num_classes):
        raise ValueError(f"cluster_confusion: cluster ids must lie in [0, {num_clusters}) and class ids in "
                         f"[0, {num_classes}) (or {ignore_index})")
    return torch.bincount(c * num_classes + t, minlength=num_clusters * num_classes).view(num_clusters, num_classes)


def assign_clusters_to_classes(confusion: torch.Tensor) -> torch.Tensor:
    """The one-to-one cluster -> class map with the most agreeing pixels (Hungarian matching).

    Args:
        confusion: int or float ``[C, K]`` pixel counts.

    Returns:
        int64 ``[C]`` the class of each cluster, ``-1`` for clusters left without one (``C > K``).
    """
    if confusion.ndim != 2:
        raise ValueError(f"assign_clusters_to_classes: confusion must be [C, K], got {tuple(confusion.shape)}")
    return solve_assignment(-confusion.double()[None], solver="scipy")[0]


def map_clusters(clusters: torch.Tensor, mapping: torch.Tensor, unmatched: int = -1) -> torch.Tensor:
    """Class maps from cluster maps: int64 ``[...]`` -> int64 ``[...]`` through ``mapping [C]``;
    clusters without a class get ``unmatched`` (a value no class has, so they count as errors)."""
    out = mapping.to(clusters.device)[clusters]
    return torch.where(out >= 0, out, unmatched)


class ClusterMatchedIoU(Metric):
    """mIoU and pixel accuracy of unlabelled segment maps once every segment has a class.

    ``num_clusters`` set: ids are clusters shared by all images and the matching is one-to-one
    (Hungarian) on the ``[C, K]`` confusion summed over the split (and over DDP ranks), made
    in :meth:`compute`; clusters left without a class (``C > K``) count as errors. ``None``:
    every segment of every image takes the majority class of its non-void pixels, and the mapped
    maps are counted in a ``[K, K + 1]`` confusion. Pixels with id ``-1`` (no segment) are
    misses of their class in both.

    Args:
        num_classes: ``K``.
        num_clusters: ``C``, or None for per-image segments.
        ignore_index: void value of the targets.
        average: ``present`` or ``all`` (see :func:`~lightning_seg.metrics.semantic.semantic_scores`).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    confusion: torch.Tensor

    def __init__(self, num_classes: int, num_clusters: int | None = None, ignore_index: int = 255,
                 average: Literal["present", "all"] = "present", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1 or (num_clusters is not None and num_clusters < 1):
            raise ValueError(f"ClusterMatchedIoU: num_classes ({num_classes}) and num_clusters ({num_clusters}) "
                             "must be positive")
        self.num_classes, self.num_clusters = num_classes, num_clusters
        self.ignore_index, self.average = ignore_index, average
        # hungarian: [C + 1, K] (last row: no segment); majority: [K, K + 1] (last column: no segment)
        shape = (num_clusters + 1, num_classes) if num_clusters is not None else (num_classes, num_classes + 1)
        self.add_state("confusion", torch.zeros(shape, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, segments: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> None:
        """Accumulate a batch.

        Args:
            segments: per image int64 ``[H, W]`` ids (``-1``: no segment; ``< num_clusters``
                when it is set).
            target: per image int64 ``[H, W]`` class ids or ``ignore_index``.
        """
        if len(segments) != len(target):
            raise ValueError(f"ClusterMatchedIoU: {len(segments)} segment maps but {len(target)} targets")
        k = self.num_classes
        for i, (seg, t) in enumerate(zip(segments, target)):
            if seg.shape != t.shape:
                raise ValueError(f"ClusterMatchedIoU: image {i}: segments {tuple(seg.shape)} but target "
                                 f"{tuple(t.shape)}")
            keep = (t != self.ignore_index) & (t >= 0) & (t < k)
            bad_target = (t != self.ignore_index) & ~keep
            if bool(bad_target.any()):
                raise ValueError(f"ClusterMatchedIoU: image {i}: target classes outside [0, {k}) "
                                 f"(and not {self.ignore_index})")
            ids, cls = seg[keep].long(), t[keep].long()
            if ids.numel() and int(ids.min()) < -1:
                raise ValueError(f"ClusterMatchedIoU: image {i}: segment ids must be >= -1, got {int(ids.min())}")
            if self.num_clusters is not None:
                if ids.numel() and int(ids.max()) >= self.num_clusters:
                    raise ValueError(f"ClusterMatchedIoU: image {i}: segment id {int(ids.max())} >= num_clusters="
                                     f"{self.num_clusters}")
                row = torch.where(ids < 0, self.num_clusters, ids)
                counts = torch.bincount(row * k + cls, minlength=(self.num_clusters + 1) * k)
                self.confusion = self.confusion + counts.view(self.num_clusters + 1, k)
                continue
            # majority class of every segment of this image
            found = ids >= 0
            uniq, inverse = torch.unique(ids[found], return_inverse=True)
            per_segment = torch.bincount(inverse * k + cls[found], minlength=len(uniq) * k).view(len(uniq), k)
            mapped = torch.full_like(ids, k)  # no segment: the "no class" column
            mapped[found] = per_segment.argmax(1)[inverse]
            counts = torch.bincount(cls * (k + 1) + mapped, minlength=k * (k + 1))
            self.confusion = self.confusion + counts.view(k, k + 1)

    def class_confusion(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``[K, K + 1]`` class confusion after matching and the cluster -> class map
        (int64 ``[C]``, ``-1`` unmatched; None for majority labelling)."""
        if self.num_clusters is None:
            return self.confusion, None
        k = self.num_classes
        mapping = assign_clusters_to_classes(self.confusion[:-1])
        out = torch.zeros(k, k + 1, dtype=torch.int64, device=self.confusion.device)
        cols = torch.where(mapping >= 0, mapping, k).to(self.confusion.device)
        out.index_add_(1, cols, self.confusion[:-1].T.contiguous())
        out[:, k] += self.confusion[-1]
        return out, mapping

    def compute(self) -> dict[str, torch.Tensor]:
        """``mIoU``, ``pixel_acc``, ``mAcc``, ``per_class_iou`` ``[K]`` (float64) and, with
        ``num_clusters``, ``assignment`` int64 ``[C]``."""
        confusion, mapping = self.class_confusion()
        scores = semantic_scores(confusion, self.average)
        out = {name: scores[name] for name in ("mIoU", "pixel_acc", "mAcc", "per_class_iou")}
        if mapping is not None:
            out["assignment"] = mapping
        return out
