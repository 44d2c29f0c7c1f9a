"""torchmetrics ``Metric`` subclasses for semantic, panoptic, instance and boundary evaluation, and
for unlabelled segments (cluster matching, class-agnostic covering).

All states are fixed-size tensors summed across processes, except :class:`MaskAP`, which
gathers its predictions as run-length encodings.

States are updated out of place (``s = s + x``): a state reset inside ``torch.inference_mode``
(``Trainer.validate`` runs there) is an inference tensor, and an in-place update of it in a later
``fit`` would be rejected.
"""

from lightning_seg.metrics.boundary import AverageSurfaceDistance, BoundaryIoU, TrimapAccuracy
from lightning_seg.metrics.cluster_matching import (
    ClusterMatchedIoU,
    assign_clusters_to_classes,
    cluster_confusion,
    map_clusters,
)
from lightning_seg.metrics.coco_eval import COCO_STAT_NAMES, coco_evaluate
from lightning_seg.metrics.mask_ap import MaskAP
from lightning_seg.metrics.rle import encode_runs, masks_to_coco_rles
from lightning_seg.metrics.semantic import SemanticSegmentationMetrics, confusion_matrix, semantic_scores
from lightning_seg.metrics.parsing_covering import ParsingCovering, parsing_covering_stats
from lightning_seg.metrics.panoptic_quality import PanopticQuality, panoptic_quality_stats, pq_from_stats
from lightning_seg.metrics.segment_metrics import SegmentMetrics
from lightning_seg.metrics.task_metrics import TaskMetrics
from lightning_seg.metrics.panoptic_segments import (
    PanopticSegments,
    segments_from_category_instance,
    segments_from_id_maps,
    segments_from_masks,
    to_panoptic_segments,
)

__all__ = [
    "AverageSurfaceDistance",
    "BoundaryIoU",
    "ClusterMatchedIoU",
    "SegmentMetrics",
    "TrimapAccuracy",
    "assign_clusters_to_classes",
    "cluster_confusion",
    "map_clusters",
    "COCO_STAT_NAMES",
    "MaskAP",
    "coco_evaluate",
    "encode_runs",
    "masks_to_coco_rles",
    "SemanticSegmentationMetrics",
    "confusion_matrix",
    "semantic_scores",
    "ParsingCovering",
    "parsing_covering_stats",
    "PanopticQuality",
    "PanopticSegments",
    "TaskMetrics",
    "panoptic_quality_stats",
    "pq_from_stats",
    "segments_from_category_instance",
    "segments_from_id_maps",
    "segments_from_masks",
    "to_panoptic_segments",
]
