"""Pure-tensor, batched, device-agnostic ops: point sampling, Hungarian matching, matrix NMS,
Fast NMS, masks as linear combinations of features (SOLOv2 kernels, YOLACT prototypes), SOLO grid targets and inference steps, YOLACT prior matching, mask-classification inference, Panoptic FPN fusion and UPSNet's panoptic head, dense
(sliding-window, TTA) inference, and the R-CNN ops (box matching and sampling, multi-scale
RoIAlign, mask targets, mask pasting).
No Lightning imports here."""

from .box_matching import (
    batched_box_ioa,
    batched_box_iou,
    ignore_crowd_overlaps,
    match_boxes,
    sample_balanced,
)
from .dense_inference import crop_and_resize, dense_probabilities, slide_inference
from .linear_assignment import sanitize_costs, solve_assignment
from .detr_panoptic import detr_panoptic_inference
from .max_deeplab_inference import max_deeplab_panoptic_inference, max_deeplab_semantic_inference
from .dynamic_masks import linear_combination_masks, yolact_box_crop
from .image_groups import ImageGroups, group_by_image
from .mask_inference import (
    binary_masks_at_size,
    instance_inference,
    panoptic_inference,
    semantic_inference,
    thing_mask,
)
from .mask_paste import paste_masks, paste_masks_batched
from .mask_resize import (
    ResizeTaps,
    resize_height,
    resize_rows,
    resize_taps,
    resize_width,
)
from .matching import (
    Matching,
    hungarian_match,
    mask_matching_costs,
    match_masks,
    point_mask_costs,
)
from .matching_costs import (
    box_l1_cost,
    class_cost,
    generalized_iou_cost,
    pairwise_dice,
    pairwise_sigmoid_bce,
    pairwise_sigmoid_focal,
)
from .fast_nms import FastNMSResult, fast_nms
from .matrix_nms import MatrixNMSResult, mask_iou_matrix, matrix_nms
from .panoptic_fpn_fusion import panoptic_fpn_fusion
from .point_sampling import (
    point_sample,
    point_sample_binary,
    point_sample_channels_last,
    sample_points_by_uncertainty,
    uncertainty_from_logits,
)
from .roi_pooling import assign_fpn_levels, crop_mask_targets, multiscale_roi_align
from .solo_inference import SOLOCandidates, maskness, points_nms, solo_candidates
from .solo_targets import SOLOTargets, mask_centers, solo_targets
from .yolact_matching import PriorMatch, ohem_negatives, yolact_match

__all__ = [
    "binary_masks_at_size",
    "detr_panoptic_inference",
    "max_deeplab_panoptic_inference",
    "max_deeplab_semantic_inference",
    "linear_combination_masks",
    "yolact_box_crop",
    "ImageGroups",
    "group_by_image",
    "SOLOCandidates",
    "maskness",
    "points_nms",
    "solo_candidates",
    "PriorMatch",
    "yolact_match",
    "ohem_negatives",
    "SOLOTargets",
    "mask_centers",
    "solo_targets",
    "FastNMSResult",
    "fast_nms",
    "assign_fpn_levels",
    "batched_box_ioa",
    "batched_box_iou",
    "crop_mask_targets",
    "ignore_crowd_overlaps",
    "match_boxes",
    "multiscale_roi_align",
    "paste_masks",
    "paste_masks_batched",
    "sample_balanced",
    "Matching",
    "MatrixNMSResult",
    "ResizeTaps",
    "box_l1_cost",
    "class_cost",
    "crop_and_resize",
    "dense_probabilities",
    "generalized_iou_cost",
    "hungarian_match",
    "instance_inference",
    "mask_iou_matrix",
    "mask_matching_costs",
    "match_masks",
    "matrix_nms",
    "pairwise_dice",
    "pairwise_sigmoid_bce",
    "pairwise_sigmoid_focal",
    "panoptic_fpn_fusion",
    "panoptic_inference",
    "point_mask_costs",
    "point_sample",
    "point_sample_binary",
    "point_sample_channels_last",
    "resize_height",
    "resize_rows",
    "resize_taps",
    "resize_width",
    "sample_points_by_uncertainty",
    "sanitize_costs",
    "semantic_inference",
    "slide_inference",
    "solve_assignment",
    "thing_mask",
    "uncertainty_from_logits",
]
