"""Scoring unsupervised segments against classes, as the unsupervised-segmentation literature does:
clusters are given classes by a one-to-one Hungarian matching on the confusion matrix
accumulated over a split, then the usual semantic metrics are computed on the mapped maps."""

from __future__ import annotations

import torch

from ..ops.linear_assignment import solve_assignment

__all__ = ["assign_clusters_to_classes", "cluster_confusion", "map_clusters"]


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
