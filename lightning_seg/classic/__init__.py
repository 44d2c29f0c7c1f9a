"""Classic (non-learned) segmentation baselines: Otsu thresholds, k-means on pixel features, and
the scoring of unsupervised segments against classes."""

from lightning_seg.classic.cluster_assignment import (
    assign_clusters_to_classes,
    cluster_confusion,
    map_clusters,
)
from lightning_seg.classic.kmeans import (
    KMeansResult,
    kmeans_plus_plus,
    lloyd_kmeans,
    pixel_features,
)
from lightning_seg.classic.thresholding import (
    grey_levels,
    level_histograms,
    multi_otsu_thresholds,
    otsu_thresholds,
    threshold_classes,
)

__all__ = [
    "KMeansResult",
    "assign_clusters_to_classes",
    "cluster_confusion",
    "grey_levels",
    "kmeans_plus_plus",
    "level_histograms",
    "lloyd_kmeans",
    "map_clusters",
    "multi_otsu_thresholds",
    "otsu_thresholds",
    "pixel_features",
    "threshold_classes",
]
