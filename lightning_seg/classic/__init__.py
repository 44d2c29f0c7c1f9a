"""Classic (non-learned) segmentation baselines: Otsu thresholds, seeded region growing, marker
watershed, k-means on pixel features, as batched functions and as parameter-free predictors
(:mod:`lightning_seg.classic.segmenters`) that ``ClassicSegmentationModule`` runs through the CLI;
the scoring of unsupervised segments against classes lives in :mod:`lightning_seg.metrics`."""

from lightning_seg.classic.kmeans import (
    KMeansResult,
    kmeans_plus_plus,
    lloyd_kmeans,
    pixel_features,
)
from lightning_seg.classic.region_growing import (
    gradient_minima_seeds,
    grid_seeds,
    region_growing,
)
from lightning_seg.classic.segmenters import (
    ClassicSegmenter,
    KMeansSegmentation,
    MarkerWatershed,
    OtsuThresholding,
    RegionGrowing,
)
from lightning_seg.classic.thresholding import (
    grey_levels,
    level_histograms,
    multi_otsu_thresholds,
    otsu_thresholds,
    threshold_classes,
)
from lightning_seg.classic.watershed import (
    distance_peak_markers,
    gradient_magnitude,
    h_minima_markers,
    watershed_segments,
)
from lightning_seg.metrics.cluster_matching import (
    assign_clusters_to_classes,
    cluster_confusion,
    map_clusters,
)

__all__ = [
    "ClassicSegmenter",
    "KMeansResult",
    "KMeansSegmentation",
    "MarkerWatershed",
    "OtsuThresholding",
    "RegionGrowing",
    "assign_clusters_to_classes",
    "cluster_confusion",
    "distance_peak_markers",
    "gradient_magnitude",
    "gradient_minima_seeds",
    "grey_levels",
    "grid_seeds",
    "h_minima_markers",
    "kmeans_plus_plus",
    "level_histograms",
    "lloyd_kmeans",
    "map_clusters",
    "multi_otsu_thresholds",
    "otsu_thresholds",
    "pixel_features",
    "region_growing",
    "threshold_classes",
    "watershed_segments",
]
