"""Losses: the set criterion of query-based models (by term) and the per-pixel losses."""

from lightning_seg.losses.class_weights import (
    class_weights_from_counts,
    compute_class_weights,
    count_class_pixels,
    load_class_weights,
)
from lightning_seg.losses.combined import CombinedLoss
from lightning_seg.losses.cross_entropy import CrossEntropyLoss
from lightning_seg.losses.dice import DiceLoss
from lightning_seg.losses.focal import FocalLoss
from lightning_seg.losses.lovasz import LovaszSoftmaxLoss, lovasz_softmax
from lightning_seg.losses.max_deeplab_loss import MaXDeepLabCriterion
from lightning_seg.losses.ohem import OhemCrossEntropyLoss, ohem_keep_mask
from lightning_seg.losses.set_criterion import SetCriterion
from lightning_seg.losses.solo_loss import SOLOCriterion, dice_loss_per_mask, downsample_masks
from lightning_seg.losses.task_weighting import TaskWeighting
from lightning_seg.losses.yolact_loss import YOLACTCriterion, random_subset_per_image

__all__ = [
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "MaXDeepLabCriterion",
    "OhemCrossEntropyLoss",
    "SOLOCriterion",
    "SetCriterion",
    "TaskWeighting",
    "YOLACTCriterion",
    "dice_loss_per_mask",
    "downsample_masks",
    "random_subset_per_image",
    "class_weights_from_counts",
    "compute_class_weights",
    "count_class_pixels",
    "load_class_weights",
    "lovasz_softmax",
    "ohem_keep_mask",
]
